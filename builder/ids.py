"""Content-derived EC2-style identifiers (ami-/aki-/ari-/i- plus 17 lowercase hex digits)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path

ID_RE = re.compile(r"^(ami|aki|ari|i)-[0-9a-f]{17}$")
_CHUNK = 1 << 20


def make_id(prefix: str, digest_hex: str) -> str:
    return f"{prefix}-{digest_hex[:17]}"


def random_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def is_id(value: str, prefix: str | None = None) -> bool:
    m = ID_RE.match(value)
    return bool(m) and (prefix is None or m.group(1) == prefix)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sparse_sha256(path: Path, block: int = 65536) -> str:
    """Digest of a disk's logical content that skips holes and all-zero blocks.

    Hashing a 2 GiB sparse disk byte by byte costs seconds of zeros; this digest covers
    (offset, bytes) of every non-zero block instead, so it depends only on what the disk
    reads back as, not on how the file happens to be allocated.
    """
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"amilab-sparse-sha256:{block}:{size}\n".encode())
    zero = bytes(block)
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                data_start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            hole_start = os.lseek(fd, data_start, os.SEEK_HOLE)
            start = data_start - data_start % block
            f.seek(start)
            while start < hole_start:
                chunk = f.read(block)
                if not chunk:
                    break
                if chunk != zero[: len(chunk)]:
                    h.update(start.to_bytes(8, "little"))
                    h.update(chunk)
                start += len(chunk)
            pos = max(start, hole_start)
    return h.hexdigest()


def registration_id(prefix: str, content_digest: str, registration: dict) -> str:
    payload = content_digest + json.dumps(registration, sort_keys=True, separators=(",", ":"))
    return make_id(prefix, hashlib.sha256(payload.encode()).hexdigest())
