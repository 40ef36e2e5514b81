"""`amilab df`: the space amilab's state and caches use, by kind, as `docker system df`
shows it: each kind's count, size and what `amilab prune` (with its defaults) would reclaim.
Every block is counted once (builder.state.blocks), so the total is what `du` measures over
AMILAB_HOME and the cache together, and a file two kinds share (an image's disk that is also
a snapshot's) counts in the first kind listed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import paths
from builder.state import prune
from builder.state.blocks import BlockCounter, walk
from builder.state.diskfull import mount_point
from builder.state.references import References, referenced

# df's kinds, in the order a shared block is attributed
KINDS = (
    "Images",
    "Snapshots",
    "Volumes",
    "Instances",
    "Unreferenced",
    "Work area",
    "Logs",
    "Registry",
    "Base trees",
    "Package caches",
    "Kernels",
    "Other caches",
)
_HOME_KINDS = {"volumes": "Volumes", "instances": "Instances", "work": "Work area",
               "logs": "Logs", "kernels": "Kernels"}  # fmt: skip
_CACHE_KINDS = prune.CACHE_KINDS


# what `amilab df --json` calls Usage's fields, in order
FIELDS = ("Type", "Count", "SizeBytes", "ReclaimableBytes")


@dataclass
class Usage:
    kind: str
    count: int = 0
    size: int = 0
    reclaimable: int = 0

    def shape(self) -> dict[str, Any]:
        return dict(zip(FIELDS, (self.kind, self.count, self.size, self.reclaimable), strict=True))


def disk_usage(home: Path | None = None, cache: Path | None = None) -> dict[str, Any]:
    """`amilab df --json`: {"Space": [...], "TotalBytes", "ReclaimableBytes", "Filesystems"}."""
    home = home or paths.amilab_home()
    cache = cache or paths.cache_dir()
    usage = {k: Usage(k) for k in KINDS}
    owners = _Owners(referenced(home, {"images"}), referenced(home, {"snapshots"}),
                     referenced(home))  # fmt: skip
    entries: list[tuple[int, Path, os.stat_result, bool]] = []
    for kind, top in _tops(home, cache):
        if top in (home, cache):  # the folder itself, without its entries
            entries.append((KINDS.index(kind), top, os.lstat(top), False))
            continue
        for path, st in walk(top):
            k = kind
            if kind == "Artifacts":
                k = "Images" if stat.S_ISDIR(st.st_mode) else owners.kind(path)
            entries.append((KINDS.index(k), path, st, path == top))
    counter = BlockCounter()
    for index, path, st, is_top in sorted(entries, key=lambda e: e[0]):
        u = usage[KINDS[index]]
        u.size += counter.size(st, path)
        u.count += _counts(u.kind, path, st, is_top)
    for item in prune.plan(home=home, cache=cache).items:
        usage[item.kind].reclaimable += item.size
    rows = [u.shape() for u in usage.values()]
    return {
        "Space": rows,
        "TotalBytes": sum(u.size for u in usage.values()),
        "ReclaimableBytes": sum(u.reclaimable for u in usage.values()),
        "Filesystems": _filesystems([home, cache]),
    }


@dataclass
class _Owners:
    images: References
    snapshots: References
    everything: References

    def kind(self, path: Path) -> str:
        if self.images.covers(path):
            return "Images"
        if self.snapshots.covers(path):
            return "Snapshots"
        return "Images" if self.everything.covers(path) else "Unreferenced"


def _tops(home: Path, cache: Path) -> list[tuple[str, Path]]:
    """(kind, path) for each top-level entry of the home and the cache; "Artifacts" are
    sorted per file by the records that name them."""
    tops: list[tuple[str, Path]] = []
    for root, table, default in ((home, _HOME_KINDS, "Registry"), (cache, _CACHE_KINDS,
                                                                  "Other caches")):  # fmt: skip
        if not root.is_dir():
            continue
        tops.append((default, root))
        for entry in sorted(root.iterdir()):
            kind = "Artifacts" if root == home and entry.name == "artifacts" else None
            tops.append((kind or table.get(entry.name, default), entry))
    return tops


def _counts(kind: str, path: Path, st: os.stat_result, is_top: bool) -> int:
    """What a kind's Count counts: images, snapshots and unreferenced artifacts by file,
    the others by top-level entry (an instance's folder, a cached kernel)."""
    if kind in ("Images", "Snapshots", "Unreferenced", "Volumes"):
        return int(stat.S_ISREG(st.st_mode))
    return int(is_top)


def _filesystems(roots: list[Path]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for root in roots:
        mount = mount_point(root)
        if str(mount) in seen:
            continue
        st = os.statvfs(mount)
        seen[str(mount)] = {
            "MountPoint": str(mount),
            "SizeBytes": st.f_blocks * st.f_frsize,
            "AvailableBytes": st.f_bavail * st.f_frsize,
        }
    return list(seen.values())
