"""Bytes a set of files really occupies, each block once: a sparse file's holes cost
nothing (st_blocks), a hard link counts once per (device, inode), and on a filesystem that
shares extents between files (reflinks: btrfs, XFS, bcachefs, OCFS2) an extent FIEMAP marks
shared counts once per (device, physical offset)."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

REFLINK_FILESYSTEMS = frozenset({"btrfs", "xfs", "bcachefs", "ocfs2"})
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_HEADER = struct.Struct("=QQLLLL")  # fm_start, fm_length, fm_flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQLLLL")  # logical, physical, length, 2 reserved, flags, 3 reserved
_BATCH = 256


class BlockCounter:
    """Counts what each path adds to the total, never a block twice across calls."""

    def __init__(self) -> None:
        self.inodes: set[tuple[int, int]] = set()
        self.extents: set[tuple[int, int]] = set()

    def size(self, st: os.stat_result, path: Path) -> int:
        """What the file at `path` (lstat result `st`) adds; 0 if already counted."""
        key = (st.st_dev, st.st_ino)
        if key in self.inodes:
            return 0
        self.inodes.add(key)
        if stat.S_ISREG(st.st_mode) and st.st_blocks and reflinks_possible(st.st_dev):
            try:
                return self._unshared(st, path)
            except OSError:
                pass  # no FIEMAP here: fall back to the allocated size
        return st.st_blocks * 512

    def _unshared(self, st: os.stat_result, path: Path) -> int:
        total = 0
        for physical, length, flags in fiemap(path):
            if flags & FIEMAP_EXTENT_SHARED:
                if (st.st_dev, physical) in self.extents:
                    continue
                self.extents.add((st.st_dev, physical))
            total += length
        return total

    def tree(self, root: Path) -> tuple[int, int]:
        """(bytes, files) under `root`, `root` itself included; symlinks are not followed."""
        total = files = 0
        for path, st in walk(root):
            total += self.size(st, path)
            files += not stat.S_ISDIR(st.st_mode)
        return total, files


def walk(root: Path, one_filesystem: bool = False) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under `root` and `root` itself, with its lstat; vanished ones skipped;
    `one_filesystem`: not into what is mounted below `root` (a chroot's /proc, say)."""
    try:
        st = os.lstat(root)
    except OSError:
        return
    yield root, st
    device = st.st_dev
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                est = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if one_filesystem and est.st_dev != device:
                continue
            yield Path(e.path), est
            if stat.S_ISDIR(est.st_mode):
                stack.append(Path(e.path))


def fiemap(path: Path) -> Iterator[tuple[int, int, int]]:
    """(physical offset, length, flags) of each extent of a file (FS_IOC_FIEMAP)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        start = 0
        while True:
            buf = bytearray(_HEADER.size + _BATCH * _EXTENT.size)
            _HEADER.pack_into(buf, 0, start, 0xFFFFFFFFFFFFFFFF - start, FIEMAP_FLAG_SYNC, 0,
                              _BATCH, 0)  # fmt: skip
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = _HEADER.unpack_from(buf, 0)[3]
            if not mapped:
                return
            last = False
            for i in range(mapped):
                ext = _EXTENT.unpack_from(buf, _HEADER.size + i * _EXTENT.size)
                logical, physical, length, flags = ext[0], ext[1], ext[2], ext[5]
                yield physical, length, flags
                start = logical + length
                last = bool(flags & FIEMAP_EXTENT_LAST)
            if last:
                return
    finally:
        os.close(fd)


@lru_cache(maxsize=64)
def reflinks_possible(dev: int) -> bool:
    """Whether the filesystem on device `dev` can share extents between files."""
    return filesystem_type(dev) in REFLINK_FILESYSTEMS


def filesystem_type(dev: int) -> str:
    """The type of the filesystem mounted from device `dev` (/proc/self/mountinfo)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 3 or not right:
            continue
        major, _, minor = fields[2].partition(":")
        if os.makedev(int(major), int(minor)) == dev:
            return right.split()[0]
    return ""
