"""The backing files a qcow2 file names, read from its header (qcow2 spec: magic "QFI\\xfb",
backing_file_offset u64 at byte 8, backing_file_size u32 at byte 16), without running
qemu-img: df, prune and the space estimates ask this of every volume and overlay."""

from __future__ import annotations

import struct
from pathlib import Path

MAGIC = b"QFI\xfb"
_MAX_CHAIN = 16  # deeper than amilab ever makes; also stops a loop of backing files


def backing_file(path: Path) -> Path | None:
    """The file `path` is copy-on-write over, or None (not qcow2, no backing, unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != MAGIC:
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not size or size > 4096:
                return None
            f.seek(offset)
            name = f.read(size).decode(errors="replace")
    except OSError:
        return None
    backing = Path(name)
    return backing if backing.is_absolute() else path.parent / backing


def backing_chain(path: Path) -> list[Path]:
    """Every file under `path`, nearest first."""
    chain: list[Path] = []
    current = backing_file(path)
    while current is not None and len(chain) < _MAX_CHAIN and current not in chain:
        chain.append(current)
        current = backing_file(current)
    return chain
