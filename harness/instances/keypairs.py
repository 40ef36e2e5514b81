"""Key pairs as EC2 keeps them: amilab stores only the public half; `create-key-pair`
prints the private key once. `--key-name` at launch puts that public key into the
instance's metadata (public-keys/0), where the image's agent installs it.

A key pair belongs to an account, as on EC2: every call here acts as
`builder.images.shapes.account_id()` (the API request's signer, else the local account the
CLI is), sees only that account's keys, and one name may exist in several accounts. Rows are
keyed `ACCOUNT<TAB>NAME` (a tab is never in a key name) with the owner in `OwnerId`, which is
never shown; rows written before accounts were kept are keyed by the bare name and belong to
the local account, and are read where they are."""

from __future__ import annotations

import base64
import hashlib
import re

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from builder.errors import BadInput
from builder.ids import random_id
from builder.images.records import now_iso
from builder.images.shapes import account_id, local_account_id
from builder.images.tables import Row
from harness.instances import store

_NAME = re.compile(r"[\x20-\x7e]{1,255}")
KEY_TYPES = ("rsa", "ed25519")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise BadInput(f"InvalidParameterValue: key pair name {name!r}: 1-255 ASCII characters")


def _fingerprint(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


_PRIVATE = ("PublicKey", "OwnerId")


def _owner(row: Row) -> str:
    return row.get("OwnerId") or local_account_id()


def _lookup(name: str) -> tuple[str, Row] | None:
    """The table key and row of the caller's key pair `name`."""
    me = account_id()
    key = f"{me}\t{name}"
    row = store.key_pairs().get(key)
    if row is None and me == local_account_id() and "\t" not in name:
        key, row = name, store.key_pairs().get(name)  # a row from before accounts were kept
    return (key, row) if row is not None else None


def _mine() -> list[Row]:
    me = account_id()
    return [r for r in store.key_pairs().list() if _owner(r) == me]


def public_view(row: Row) -> Row:
    """A record as describe-key-pairs shows it: no public key, no owner."""
    return {k: v for k, v in row.items() if k not in _PRIVATE}


def _tag_list(tags: dict[str, str] | None) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted((tags or {}).items())]


def _insert(name: str, public_line: str, key_type: str, tags: dict[str, str] | None) -> Row:
    _check_name(name)
    owner = account_id()
    row: Row = {
        "KeyPairId": random_id("key"),
        "KeyName": name,
        "KeyFingerprint": _fingerprint(public_line),
        "KeyType": key_type,
        "CreateTime": now_iso(),
        "Tags": _tag_list(tags),
        "PublicKey": public_line,
        "OwnerId": owner,
    }
    with store.key_pairs().transaction():  # the name check and the insert are one step
        if _lookup(name) is not None:
            raise BadInput(f"InvalidKeyPair.Duplicate: The keypair '{name}' already exists.")
        return store.key_pairs().insert(f"{owner}\t{name}", row)


def create_key_pair(
    name: str, key_type: str = "ed25519", tags: dict[str, str] | None = None
) -> tuple[Row, str]:
    """The record and the private key (OpenSSH PEM), which amilab does not keep."""
    if key_type not in KEY_TYPES:
        raise BadInput(f"InvalidParameterValue: key type {key_type!r}; allowed: rsa, ed25519")
    key = ed25519.Ed25519PrivateKey.generate() if key_type == "ed25519" else (
        rsa.generate_private_key(public_exponent=65537, key_size=2048))  # fmt: skip
    private_format = (
        serialization.PrivateFormat.OpenSSH
        if key_type == "ed25519"
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return _insert(name, f"{public} {name}", key_type, tags), private


def import_key_pair(name: str, public_material: str, tags: dict[str, str] | None = None) -> Row:
    text = public_material.strip()
    parts = text.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise BadInput("InvalidKey.Format: Key is not in valid OpenSSH public key format")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        paramiko.PKey.from_type_string(parts[0], blob)
    except Exception:  # noqa: BLE001 - whatever paramiko says, the answer is EC2's
        raise BadInput("InvalidKey.Format: Key is not in valid OpenSSH public key format") from None
    key_type = "ed25519" if parts[0] == "ssh-ed25519" else "rsa"
    return _insert(name, " ".join(parts[:2] + [name]), key_type, tags)


def find_key_pair(name: str) -> Row:
    """The caller's key pair (with its public key), or EC2's InvalidKeyPair.NotFound."""
    found = _lookup(name)
    if found is None:
        raise BadInput(f"InvalidKeyPair.NotFound: The key pair '{name}' does not exist")
    return found[1]


def find_key_pair_id(key_pair_id: str) -> Row:
    for row in _mine():
        if row["KeyPairId"] == key_pair_id:
            return row
    raise BadInput(f"InvalidKeyPair.NotFound: The key pair '{key_pair_id}' does not exist")


def table_key(key_pair_id: str) -> str:
    """The key pairs table's key of the caller's key pair with this ID (to change its row,
    e.g. its tags), or EC2's InvalidKeyPair.NotFound."""
    row = find_key_pair_id(key_pair_id)
    found = _lookup(row["KeyName"])
    assert found is not None  # just found among the caller's own
    return found[0]


def describe_key_pairs(names: list[str] | None = None) -> list[Row]:
    rows = [find_key_pair(n) for n in names] if names else _mine()
    return [public_view(r) for r in rows]


def delete_key_pair(name: str) -> bool:
    """As EC2: deleting a key pair that does not exist succeeds (another account's key of
    the same name is not touched)."""
    found = _lookup(name)
    return found is not None and store.key_pairs().delete(found[0])
