"""The per-instance SSH key pair (ed25519), as EC2 gave each launch its key pair.

paramiko reads ed25519 keys but cannot make them, so `cryptography` (paramiko's own
dependency) generates the key and writes it in OpenSSH's format.
"""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def make_key_pair(directory: Path, comment: str) -> tuple[Path, str]:
    """Write `id_ed25519` (mode 600) and `id_ed25519.pub`; returns (private path, public line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path = directory / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    line = f"{public.decode()} {comment}"
    (directory / "id_ed25519.pub").write_text(line + "\n")
    return path, line


def load_private_key(path: Path) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key_file(str(path))
