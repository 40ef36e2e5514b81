"""The one work area (AMILAB_HOME/work) and durable placement of files into the state.

An artifact is made under the work area, fsynced, and renamed into place (then its directory
fsynced) before the record that names it is committed: a crash leaves either no artifact, or
a complete one that no record names yet (fsck quarantines it), never a half-written file under
a digest's name. Every directory made in the work area carries its owner in its name
(`WHAT@PID.START.RANDOM`, START being the process's start time), so the next run can tell
leftovers of a dead process from the work of a live one without any other bookkeeping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from builder import paths
from builder.pids import pid_alive, process_start, same_process
from builder.state.diskfull import writing

# names of work entries and the owner they carry: ours, then older writers' (PID only)
_OWNED = re.compile(r"@(\d+)\.(\d+)\.[A-Za-z0-9_]+$")
_LEGACY = (
    re.compile(r"-(\d+)-[0-9a-f]{8}$"),  # image_files.work_dir before: WHAT-PID-HEX
    re.compile(r"^import-ami-[0-9a-f]+\.(\d+)\."),  # the API's import tasks
    re.compile(r"^fetch-[0-9a-f]{64}-(\d+)"),  # matrix artifacts being fetched
    re.compile(r"\.tar\.partial(\d+)$"),  # a base tree being cached (build.rootfs)
)
# an entry whose owner its name does not tell is left alone this long (an older amilab's)
UNOWNED_GRACE_S = 24 * 3600
# a temporary name beside a destination (`place`'s, and store_artifact's before it)
TMP_SUFFIX = re.compile(r"\.tmp(\d+)$")


def root() -> Path:
    r = paths.work_root()
    r.mkdir(parents=True, exist_ok=True)
    return r


def owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}.{process_start(pid) or 0}"


def new_dir(what: str, parent: Path | None = None) -> Path:
    """A fresh directory in the work area (or under `parent`, a directory in it) whose name
    says which process owns it."""
    where = parent or root()
    where.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{what}@{owner_tag()}.", dir=where))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(src: Path, dest: Path, mode: int | None = 0o444) -> Path:
    """Move a finished file to `dest` durably: its bytes are on disk before the name appears,
    and the name is on disk when this returns. `src` on another filesystem is copied (holes
    kept) to a temporary name beside `dest` first; that name is swept by fsck if we die."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_dev != dest.parent.stat().st_dev:
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
        try:
            with writing(dest.parent, f"artifact {dest.name}"):
                subprocess.run(["cp", "--sparse=always", str(src), str(tmp)], check=True,
                               capture_output=True)  # fmt: skip
        except BaseException:
            tmp.unlink(missing_ok=True)  # nothing half-copied stays beside the store
            raise
        src.unlink()
        src = tmp
    if mode is not None:
        os.chmod(src, mode)
    fsync_file(src)
    os.rename(src, dest)
    fsync_dir(dest.parent)
    return dest


def write_file(dest: Path, data: bytes, mode: int | None = 0o444) -> Path:
    """`dest` holding `data`, written under the work area and placed as `place` does."""
    d = new_dir("write")
    try:
        tmp = d / dest.name
        tmp.write_bytes(data)
        return place(tmp, dest, mode)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Leftover:
    path: Path
    why: str


def owner_gone(name: str) -> bool | None:
    """Whether the process a work entry's name names has ended; None if the name names none."""
    if m := _OWNED.search(name):
        return not same_process(int(m.group(1)), int(m.group(2)) or None)
    for pattern in _LEGACY:
        if m := pattern.search(name):
            return not pid_alive(int(m.group(1)))
    return None


def leftovers(now: float | None = None) -> list[Leftover]:
    """Entries of the work area whose process is gone (or, when their name names none, that
    nothing has touched for a day)."""
    now = time.time() if now is None else now
    found = []
    # a build's root tree on the memory-backed scratch is work too (only owned names there:
    # the directory is shared with everything else on the host)
    if (scratch := paths.scratch_dir()) is not None:
        for entry in sorted(scratch.glob("amilab-*@*")):
            if owner_gone(entry.name):
                found.append(Leftover(entry, "its process has ended"))
    base = paths.work_root()
    if not base.is_dir():
        return found
    for entry in sorted(base.iterdir()):
        gone = owner_gone(entry.name)
        if gone:
            found.append(Leftover(entry, "its process has ended"))
        elif gone is None:
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if age > UNOWNED_GRACE_S:
                found.append(Leftover(entry, f"unowned and untouched for {age / 3600:.0f} h"))
    return found


def _mounted_under(path: Path) -> bool:
    """Whether something is mounted inside `path` (a chroot's /proc of a build that died
    outside its namespace): removing through it would remove the host's files."""
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return True
    return any(line.split()[4].startswith(prefix) for line in lines)


def _start_epoch(pid: int, start_ticks: int) -> float | None:
    try:
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    return btime + start_ticks / os.sysconf("SC_CLK_TCK")


def live_since() -> float | None:
    """When the oldest process still working in the work area started (epoch seconds), or
    None when none is: a file placed after that may belong to a record about to be committed
    (placing comes first, then the commit), so it is not an orphan yet."""
    base = paths.work_root()
    if not base.is_dir():
        return None
    starts = []
    for entry in base.iterdir():
        if (m := _OWNED.search(entry.name)) and owner_gone(entry.name) is False:
            if (t := _start_epoch(int(m.group(1)), int(m.group(2)))) is not None:
                starts.append(t)
        elif owner_gone(entry.name) is False:  # an older name: PID only
            starts.append(entry.lstat().st_mtime - UNOWNED_GRACE_S)
    return min(starts, default=None)


def remove(path: Path) -> bool:
    """Remove a leftover; False when it cannot safely go (something is mounted in it)."""
    if path.is_dir() and not path.is_symlink():
        if _mounted_under(path):
            return False
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return not path.exists()


def sweep() -> list[Leftover]:
    """Remove what dead processes left in the work area."""
    return [item for item in leftovers() if remove(item.path)]
