"""`amilab prune`: reclaim what nothing needs, as `docker system prune` does, showing first
what it would remove and removing only with `yes`:
- artifacts and volume files no record references, as fsck finds its orphans
  (builder.state.references.unreferenced: nothing a live process may be placing), and
  instance folders whose instance has ended and whose owner is gone;
- work-area entries whose process is gone (builder.state.workarea.leftovers, as fsck);
- the logs of ended instances older than `logs_older_than` days;
- old base trees (all but the most recently used per release) and, with `keep_cache`, the
  least recently used cache entries until the cache fits in that many bytes.
Nothing a record references is ever a candidate, whatever the rule."""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import paths
from builder.state import workarea
from builder.state.blocks import BlockCounter
from builder.state.references import References, referenced, unreferenced

DAY = 86400.0
LOGS_OLDER_THAN_DAYS = 7.0
GRACE_S = 3600.0  # an instance folder without a record is spared this long (a launch)
# the cache's folders by the df kind their space counts under
CACHE_KINDS = {"rootfs": "Base trees", "apt": "Package caches", "debs": "Package caches",
                "archpkg": "Package caches", "kernels": "Kernels", "headers": "Kernels",
                "modules-index": "Kernels"}  # fmt: skip


@dataclass
class Item:
    kind: str  # df's Type the space is counted under
    path: Path
    size: int
    reason: str

    def shape(self) -> dict[str, Any]:
        return {"Type": self.kind, "Path": str(self.path), "SizeBytes": self.size,
                "Reason": self.reason}  # fmt: skip


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    counter: BlockCounter = field(default_factory=BlockCounter)
    refs: References = field(default_factory=References)

    def add(self, kind: str, path: Path, reason: str, *, named_ok: bool = False) -> None:
        """`named_ok`: a record may name it and it still goes (an ended instance's folder
        and logs, which its record keeps naming)."""
        if (self.refs.covers(path) and not named_ok) or any(i.path == path for i in self.items):
            return
        self.items.append(Item(kind, path, self.counter.tree(path)[0], reason))

    @property
    def size(self) -> int:
        return sum(i.size for i in self.items)


def plan(
    *,
    keep_cache: int | None = None,
    logs_older_than: float = LOGS_OLDER_THAN_DAYS,
    home: Path | None = None,
    cache: Path | None = None,
) -> Plan:
    """What prune would remove, removing nothing."""
    home = home or paths.amilab_home()
    cache = cache or paths.cache_dir()
    p = Plan(refs=referenced(home))
    now = time.time()
    for f, why in unreferenced(p.refs, home):
        p.add("Volumes" if f.parent.name == "volumes" else "Unreferenced", f, why)
    for d in _entries(home / "instances"):
        # a folder made for a launch a moment before its record: spared for a while
        fresh = d.name not in p.refs.instances and now - _mtime(d) < GRACE_S
        if d.name.startswith("i-") and not fresh and not p.refs.instance_live(d.name, d):
            p.add("Instances", d, "its instance has ended", named_ok=True)
    for left in workarea.leftovers(now):
        p.add("Work area", left.path, left.why)
    for f in _entries(home / "logs" / "instances"):
        iid = f.name.split(".", 1)[0]
        ended = p.refs.instances.get(iid, "terminated") == "terminated"
        if ended and now - f.stat().st_mtime > logs_older_than * DAY:
            why = f"log of an ended instance, older than {logs_older_than:g} days"
            p.add("Logs", f, why, named_ok=True)
    _old_base_trees(p, cache / "rootfs")
    if keep_cache is not None:
        _over_limit(p, cache, keep_cache)
    return p


def remove(p: Plan) -> int:
    """Remove what `p` lists; the bytes reclaimed."""
    done = 0
    for item in p.items:
        if os.path.lexists(item.path) and workarea.remove(item.path):
            done += item.size
    return done


def _old_base_trees(p: Plan, rootfs: Path) -> None:
    """Per release and architecture key's release, all but the most recently used tarball."""
    newest: dict[str, Path] = {}
    for tar in sorted(rootfs.glob("*.tar"), key=_last_use, reverse=True):
        release = tar.name.rsplit("-", 1)[0]
        if release in newest:
            p.add("Base trees", tar, f"an older base tree of {release} than {newest[release].name}")
        else:
            newest[release] = tar
    for partial in rootfs.glob("*.partial*"):
        if workarea.owner_gone(partial.name) is not False:
            p.add("Base trees", partial, "left by a process that is gone")


def _over_limit(p: Plan, cache: Path, keep: int) -> None:
    """The least recently used cache entries until the rest fits in `keep` bytes."""
    entries = [e for sub in _entries(cache) if sub.is_dir() for e in _entries(sub)]
    planned = {i.path for i in p.items}
    sizes = BlockCounter()
    kept = [(e, sizes.tree(e)[0]) for e in entries if e not in planned]
    total = sum(size for _, size in kept)
    for entry, size in sorted(kept, key=lambda es: _last_use(es[0])):
        if total <= keep:
            break
        before = len(p.items)
        p.add(CACHE_KINDS.get(entry.parent.name, "Other caches"), entry,
              "least recently used cache entry over --keep-cache")  # fmt: skip
        if len(p.items) > before:
            total -= size


def _entries(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _last_use(path: Path) -> float:
    try:
        st = os.lstat(path)
    except OSError:
        return 0.0
    last = max(st.st_atime, st.st_mtime)
    if stat.S_ISDIR(st.st_mode):  # a folder's own times say little: its newest file's
        for entry in _entries(path)[:64]:
            try:
                last = max(last, entry.lstat().st_mtime)
            except OSError:
                continue
    return last


def parse_size(text: str) -> int:
    """ "10G", "512M", "1.5GiB", "0" → bytes; ValueError for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise ValueError(text)
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)
