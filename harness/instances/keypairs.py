"""Key pairs as EC2 keeps them: amilab stores only the public half; `create-key-pair`
prints the private key once. `--key-name` at launch puts that public key into the
instance's metadata (public-keys/0), where the image's agent installs it."""

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


def _insert(name: str, public_line: str, key_type: str) -> Row:
    _check_name(name)
    if store.key_pairs().get(name) is not None:
        raise BadInput(f"InvalidKeyPair.Duplicate: The keypair '{name}' already exists.")
    row: Row = {
        "KeyPairId": random_id("key"),
        "KeyName": name,
        "KeyFingerprint": _fingerprint(public_line),
        "KeyType": key_type,
        "CreateTime": now_iso(),
        "Tags": [],
        "PublicKey": public_line,
    }
    return store.key_pairs().insert(name, row)


def create_key_pair(name: str, key_type: str = "ed25519") -> tuple[Row, str]:
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
    return _insert(name, f"{public} {name}", key_type), private


def import_key_pair(name: str, public_material: str) -> Row:
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
    return _insert(name, " ".join(parts[:2] + [name]), key_type)


def find_key_pair(name: str) -> Row:
    row = store.key_pairs().get(name)
    if row is None:
        raise BadInput(f"InvalidKeyPair.NotFound: The key pair '{name}' does not exist")
    return row


def describe_key_pairs(names: list[str] | None = None) -> list[Row]:
    rows = [find_key_pair(n) for n in names] if names else store.key_pairs().list()
    return [{k: v for k, v in r.items() if k != "PublicKey"} for r in rows]


def delete_key_pair(name: str) -> bool:
    """As EC2: deleting a key pair that does not exist succeeds."""
    return store.key_pairs().delete(name)
