"""A full filesystem is an error, not a corruption: ENOSPC and EDQUOT become `DiskFull`
(exit 3, one line naming the mount point and what was being written), and the commands that
write much estimate what they need and refuse before starting when it is not there.

Writers wrap their writes in `writing(path, what)`; a tool run as a subprocess (qemu-img,
mkfs, mmdebstrap) reports a full disk only in its message, so `from_exception` also reads
that; the CLI calls it on whatever escapes as the last net.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder.errors import DiskFull

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what tools print for those errnos (strerror), e.g. qemu-img's "error while writing", and
# SQLite's SQLITE_FULL (a registry write on a full disk: sqlite3.OperationalError)
FULL_MESSAGES = (*(os.strerror(n) for n in FULL_ERRNOS), "database or disk is full")
RESERVE = 64 << 20  # left free after an estimate: logs, the registry's WAL, metadata


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem `path` is on (or would be on, once created)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    p = p.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    """What an unprivileged writer may still allocate on `path`'s filesystem."""
    st = os.statvfs(mount_point(path))
    return st.f_bavail * st.f_frsize


def allocated(path: Path) -> int:
    """Bytes a file really occupies (a sparse file's holes cost nothing); 0 if missing."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def require_space(path: Path, needed: int, what: str) -> None:
    """Refuse (exit 3) before writing `needed` bytes for `what` under `path` when its
    filesystem does not have them plus a small reserve."""
    free = free_bytes(path)
    if free < needed + RESERVE:
        raise DiskFull(
            str(mount_point(path)),
            what,
            f"not enough space: needs {human(needed + RESERVE)}, {human(free)} free",
        )


def is_full(e: BaseException) -> bool:
    """Whether `e` says a filesystem or quota was full: the errno, or a tool's message."""
    if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
        return True
    text = str(e)
    if isinstance(e, subprocess.CalledProcessError):
        text += " " + _text(e.stderr) + " " + _text(e.output)
    return any(m in text for m in FULL_MESSAGES)


def from_exception(e: BaseException, path: Path | None, what: str) -> DiskFull | None:
    """The DiskFull that `e` means, naming `path`'s filesystem (the OSError's own file if it
    has one), or None when `e` is about something else."""
    if isinstance(e, DiskFull):
        return e
    if not is_full(e):
        return None
    named = getattr(e, "filename", None)
    where = Path(named) if isinstance(named, str) and named else path
    mount = str(mount_point(where)) if where is not None else "?"
    detail = "disk quota exceeded" if getattr(e, "errno", None) == errno.EDQUOT else None
    return DiskFull(mount, what, detail or "no space left on device")


@contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Writes inside the block that fill `path`'s filesystem raise DiskFull instead."""
    try:
        yield
    except Exception as e:
        full = from_exception(e, path, what)
        if full is None or full is e:
            raise
        raise full from e


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _text(v: object) -> str:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v if isinstance(v, str) else ""
