"""Reproducible disks: every time that reaches an image comes from one build epoch.

The epoch is `SOURCE_DATE_EPOCH` when it is set, otherwise the newest package's date in the
tree (the mtime dpkg kept on `/usr/share/doc/*/changelog*`, i.e. the date of the newest
upload in the resolved set), never the wall clock. What Debian's reproducible-builds tooling
(and mmdebstrap's cleanup) leaves out is left out: logs that record times, caches that
record hosts. File times are clamped to the epoch; ext4's own times come from it through
E2FSPROGS_FAKE_TIME, and the inode change times mke2fs copies from the tree (the kernel
sets them, nothing can clamp them before mkfs) are rewritten with debugfs afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from builder.errors import BadInput, BuildFailed

EPOCH_VARIABLE = "SOURCE_DATE_EPOCH"

# Files that record when or where a build ran, not what the image is (mmdebstrap's
# cleanup/reproducible list plus what the element phases and systemd add).
VOLATILE_FILES = (
    "var/log/dpkg.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
)
# shadow(5)'s third field: the day of the last password change, set by whatever created the
# account on the day of the build
_SHADOW_FILES = ("etc/shadow", "etc/shadow-")
_CHANGELOGS = ("changelog.Debian.gz", "changelog.gz")
# Identities a package's postinst makes at random for the machine it is installed on; each
# is replaced by the package's own way of making it at the first boot of every instance
# (as /etc/machine-id is emptied). open-iscsi (diskimage-builder's `base` installs it):
# iscsid generates the name when the file says GenerateName=yes.
PER_MACHINE = {
    "etc/iscsi/initiatorname.iscsi": "## amilab: made at first boot by iscsid\nGenerateName=yes\n",
}


def configured_epoch() -> int | None:
    """SOURCE_DATE_EPOCH from the environment, or None when it is not set."""
    value = os.environ.get(EPOCH_VARIABLE)
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]+", value.strip()):
        raise BadInput(f"{EPOCH_VARIABLE}={value!r}: not a number of seconds since 1970")
    return int(value.strip())


def derived_epoch(root: Path) -> int:
    """The newest package's date in the tree: dpkg keeps each package's files' mtimes, and
    every Debian package ships its changelog. 0 for a tree without packages."""
    newest = 0
    doc = root / "usr/share/doc"
    if doc.is_dir():
        for package in os.scandir(doc):
            if not package.is_dir(follow_symlinks=False):
                continue
            for name in _CHANGELOGS:
                try:
                    st = os.lstat(os.path.join(package.path, name))
                except OSError:
                    continue
                newest = max(newest, int(st.st_mtime))
    if newest:
        return newest
    # a tree made without documentation (path-excluded): the programs' times, which dpkg
    # also keeps from the packages
    for rel in ("usr/bin", "usr/sbin"):
        if (root / rel).is_dir():
            for entry in os.scandir(root / rel):
                if entry.is_file(follow_symlinks=False):
                    newest = max(newest, int(entry.stat(follow_symlinks=False).st_mtime))
    return newest


def build_epoch(root: Path) -> int:
    configured = configured_epoch()
    return configured if configured is not None else derived_epoch(root)


def normalise_tree(root: Path, epoch: int) -> None:
    """Drop the volatile files, leave per-machine identities to the first boot, date shadow
    entries at the epoch, clamp every file's mtime to the epoch and make its atime the same
    (reading a file during the build changes it)."""
    for rel in VOLATILE_FILES:
        path = root / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    for rel, text in PER_MACHINE.items():
        path = root / rel
        if path.is_file() and not path.is_symlink():
            path.write_text(text)
    day = str(epoch // 86400)
    for rel in _SHADOW_FILES:
        path = root / rel
        if path.is_file() and not path.is_symlink():
            lines = path.read_text().splitlines(keepends=True)
            path.write_text("".join(_shadow_dated(line, day) for line in lines))
    clamp_times(root, epoch)


def _shadow_dated(line: str, day: str) -> str:
    fields = line.split(":")
    if len(fields) > 2 and fields[2].strip():
        fields[2] = day
    return ":".join(fields)


def clamp_times(root: Path, epoch: int) -> None:
    # bottom-up: listing a directory sets its atime again (relatime, atime <= mtime), so
    # a directory's times are set only once it has been read for the last time
    limit = epoch * 1_000_000_000
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in (*dirs, *files):
            _clamp(os.path.join(directory, name), limit)
    _clamp(str(root), limit)


def _clamp(path: str, limit: int) -> None:
    st = os.lstat(path)
    mtime = min(st.st_mtime_ns, limit)
    if st.st_mtime_ns != mtime or st.st_atime_ns != mtime:
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def fake_time_env(epoch: int) -> dict[str, str]:
    """What makes mke2fs (its superblock times, inode crtime) and mtools use the epoch."""
    return {"E2FSPROGS_FAKE_TIME": str(epoch), EPOCH_VARIABLE: str(epoch)}


def set_inode_ctimes(target: str, epoch: int, log: Path) -> None:
    """Every inode's change time to the epoch. `target` is an ext4 image as e2fsprogs names
    it (`disk.raw` or `disk.raw?offset=N`). mke2fs -d gives a fresh filesystem's inodes the
    numbers 1..used, so that range is all of them."""
    env = {**os.environ, **fake_time_env(epoch)}
    head = subprocess.run(
        ["dumpe2fs", "-h", target], capture_output=True, text=True, env=env, check=False
    )
    counts = dict(re.findall(r"^(Inode count|Free inodes):\s+(\d+)", head.stdout, re.MULTILINE))
    if head.returncode != 0 or len(counts) != 2:
        raise BuildFailed(f"dumpe2fs -h {target}: {head.stderr.strip() or 'no inode counts'}")
    used = int(counts["Inode count"]) - int(counts["Free inodes"])
    script = "".join(f"sif <{i}> ctime 0x{epoch:x}\n" for i in range(1, used + 1))
    result = subprocess.run(
        ["debugfs", "-w", "-f", "-", target],
        input=script, capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    with open(log, "a") as f:
        f.write(f"# debugfs -w: ctime of inodes 1..{used} set to {epoch}\n")
        f.write(result.stderr[-2000:])
    if result.returncode != 0:
        raise BuildFailed(f"debugfs -w {target}: exit {result.returncode}")
