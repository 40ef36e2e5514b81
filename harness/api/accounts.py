"""Who may call: access keys mapped to secrets and account IDs.

The accounts file is YAML:

    accounts:
      - AccountId: "111122223333"
        AccessKeyId: AKIAEXAMPLE000000001
        SecretAccessKey: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY

Without `--accounts`, the server makes one for the local account (the one the CLI acts as)
at `$AMILAB_HOME/api/accounts.yaml`, mode 0600, with a random secret, and reuses it.
"""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder import config, paths
from builder.images.shapes import local_account_id


@dataclass(frozen=True)
class Account:
    account_id: str
    access_key_id: str
    secret_access_key: str


def default_accounts_file() -> Path:
    return paths.amilab_home() / "api" / "accounts.yaml"


def _new_key_id() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))


def ensure_default(path: Path) -> None:
    """The local account's credentials, made once."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"accounts": [{
        "AccountId": local_account_id(),
        "AccessKeyId": _new_key_id(),
        "SecretAccessKey": secrets.token_urlsafe(30),
    }]}  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


def load(path: Path) -> dict[str, Account]:
    """Access key ID → account; one clear line naming the file, line and entry when it is wrong."""
    cfg = config.load(path, f"--accounts {path}", what="accounts file")
    items = cfg.section("accounts", "expected `accounts:` with a list of entries", non_empty=True)
    out: dict[str, Account] = {}
    for n, item in enumerate(items, 1):
        at = ("accounts", n - 1)
        if not isinstance(item, dict):
            raise cfg.error(f"entry {n}: expected AccountId, AccessKeyId, SecretAccessKey", *at)
        acct, key, secret = (str(item.get(k) or "") for k in
                             ("AccountId", "AccessKeyId", "SecretAccessKey"))  # fmt: skip
        if not (len(acct) == 12 and acct.isdigit()):
            raise cfg.error(
                f"entry {n}: AccountId {acct!r}: expected 12 digits (quote it)", *at, "AccountId"
            )
        if not key or not secret:
            raise cfg.error(f"entry {n}: AccessKeyId and SecretAccessKey are required", *at)
        if key in out:
            raise cfg.error(f"entry {n}: AccessKeyId {key} appears twice", *at, "AccessKeyId")
        out[key] = Account(acct, key, secret)
    return out
