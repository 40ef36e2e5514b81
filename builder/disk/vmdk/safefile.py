"""Opening the files a VMDK names, without letting a descriptor reach outside its directory.

A descriptor's extent path is the classic way to make qemu read host files ("/etc/shadow",
"../../secret", or a symlink next to the descriptor pointing anywhere). Every path is
checked lexically and then again after symlinks are resolved, and only regular files are
opened: a FIFO or a device would hang or read the host's disks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from builder.errors import BadInput


def open_regular(path: Path, where: str) -> int:
    """Open a regular file read-only; a FIFO, device, socket or directory is refused
    before anything can block on it."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadInput(f"{where}: cannot open: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"{where}: not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadInput(f"{where}: cannot open: {e.strerror}") from None
    st = os.fstat(fd)  # the name may have been swapped since the stat above
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{where}: not a regular file")
    return fd


def resolve_extent(base_dir: Path, name: str, where: str) -> Path:
    """The path of an extent named in a descriptor in `base_dir`, or BadInput."""
    field = f"{where}: extent {name!r}"
    if not name or "\0" in name or "\\" in name:
        raise BadInput(f"{field}: not a plain file name")
    p = PurePosixPath(name)
    if p.is_absolute():
        raise BadInput(f"{field}: absolute path outside the descriptor's directory")
    if ".." in p.parts:
        raise BadInput(f"{field}: '..' leads outside the descriptor's directory")
    base = base_dir.resolve()
    target = (base / p).resolve()
    if target != base and base not in target.parents:
        raise BadInput(f"{field}: a symlink leads outside the descriptor's directory")
    return target


def pread_exact(fd: int, length: int, offset: int, where: str, field: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise BadInput(
            f"{where}: {field}: bytes {offset}..{offset + length} are past the end of the file"
        )
    return data
