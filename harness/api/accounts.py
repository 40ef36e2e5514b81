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

from builder import paths
from builder.errors import BadInput
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
    """Access key ID → account; one clear line naming the file and entry when it is wrong."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise BadInput(f"--accounts {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadInput(f"--accounts {path}: not YAML: {str(e).splitlines()[0]}") from None
    items = doc.get("accounts") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise BadInput(f"--accounts {path}: expected `accounts:` with a list of entries")
    out: dict[str, Account] = {}
    for n, item in enumerate(items, 1):
        where = f"--accounts {path}: entry {n}"
        if not isinstance(item, dict):
            raise BadInput(f"{where}: expected AccountId, AccessKeyId, SecretAccessKey")
        acct, key, secret = (str(item.get(k) or "") for k in
                             ("AccountId", "AccessKeyId", "SecretAccessKey"))  # fmt: skip
        if not (len(acct) == 12 and acct.isdigit()):
            raise BadInput(f"{where}: AccountId {acct!r}: expected 12 digits (quote it)")
        if not key or not secret:
            raise BadInput(f"{where}: AccessKeyId and SecretAccessKey are required")
        if key in out:
            raise BadInput(f"{where}: AccessKeyId {key} appears twice")
        out[key] = Account(acct, key, secret)
    return out
