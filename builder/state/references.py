"""What the records reference: the one answer fsck, df and prune give to "may this file go?".

Every text cell of every table of registry.sqlite is read (images, snapshots, volumes,
instances, key pairs, store tasks, …, JSON decoded where it is JSON); each absolute path a
record names is referenced, with the files a qcow2 among them is copy-on-write over, and each
sha256 digest a record names protects the artifacts stored under it (an image's raw copy of a
qcow2-only disk, say). Walking every value instead of knowing each table's fields keeps this
right when a table or field is added: a record that names a file keeps it.

Two things are referenced only while an instance has not ended: the image records it was
launched with (`Amilab.LaunchImages`, so a deregistered AMI/AKI/ARI keeps its files for the
instance), and the backing chain of each qcow2 disk in its directory.

`unreferenced` is the other side: the files of the artifact store and the volumes folder
that nothing references and no live process is placing — fsck's orphans and prune's
candidates, the same list for both.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import paths, statedb
from builder.disk.backing import backing_chain
from builder.pids import pid_alive
from builder.state import workarea

_DIGEST = re.compile(r"[0-9a-f]{64}")
# tables of the state database that are not records (fsck's own cache)
_NOT_RECORDS = ("fsck_verified",)
# an instance directory may go once its instance has ended (or never had a record)
ENDED = ("terminated",)
LAUNCH_IMAGES = "LaunchImages"  # harness.instances.launch_images.KEY, under Amilab
OWNER_FILE = "owner.pid"  # harness.launch.instance.OWNER_FILE: the process running it


@dataclass
class References:
    paths: dict[Path, str] = field(default_factory=dict)  # path -> the resource naming it
    digests: dict[str, str] = field(default_factory=dict)  # sha256 -> the resource naming it
    instances: dict[str, str] = field(default_factory=dict)  # instance ID -> state name

    def owner(self, path: Path) -> str | None:
        """The resource that needs `path` (named itself, under a named folder, or stored under
        a digest a record names: not a temporary copy on its way there), or None."""
        for p in (path, *path.parents):
            if p in self.paths:
                return self.paths[p]
        digest = path.name[:64]
        if not _DIGEST.fullmatch(digest) or workarea.TMP_SUFFIX.search(path.name):
            return None
        return self.digests.get(digest)

    def covers(self, path: Path) -> bool:
        return self.owner(path) is not None

    def instance_live(self, instance_id: str, directory: Path) -> bool:
        """Whether an instance directory is still needed: its instance has not ended, or a
        process that owns it still runs."""
        if self.instances.get(instance_id, "terminated") not in ENDED:
            return True
        return _owner_alive(directory)


def referenced(home: Path | None = None, tables: set[str] | None = None) -> References:
    """Everything the registry at `home` (default AMILAB_HOME) references; with `tables`,
    what the records of those tables reference."""
    home = home or paths.amilab_home()
    refs = References()
    db = home / "registry.sqlite"
    if db.exists():
        conn = statedb.connect(db)
        try:
            for table, key, value in _cells(conn):
                if tables is not None and table not in tables:
                    continue
                if table == "instances" and isinstance(value, dict):
                    state = (value.get("State") or {}).get("Name", "")
                    refs.instances[str(value.get("InstanceId", key))] = state
                    if state in ENDED:  # what it was launched with is no longer needed
                        value = {**value, "Amilab": _without_launch_images(value)}
                _collect(value, key, refs)
        finally:
            conn.close()
    # a record that names a folder the stores live in (the home itself, say) must not make
    # every file in it "referenced": only names below those folders count
    stores = [home / sub / "x" for sub in ("artifacts", "volumes", "instances", "work")]
    stores += [home / "logs" / "instances" / "x", paths.cache_dir() / "x" / "x"]
    refs.paths = {p: k for p, k in refs.paths.items()
                  if not any(s.is_relative_to(p) for s in stores)}  # fmt: skip
    disks = [(p, k) for p, k in refs.paths.items() if p.suffix == ".qcow2"]
    if tables is None or "instances" in tables:
        disks += _live_instance_disks(home / "instances", refs)
    for disk, key in disks:
        for backing in backing_chain(disk):
            refs.paths.setdefault(Path(os.path.normpath(backing)), key)
    return refs


def unreferenced(refs: References, home: Path | None = None) -> list[tuple[Path, str]]:
    """(file, why) for each file of the artifact store and the volumes folder that no record
    references: orphans, unless a live process may be placing them. A `.tmpPID` name beside
    a destination is a live process's copy while that process runs; and since a file is
    placed before the record naming it is committed, one placed after the oldest live owner
    of a work-area entry started (`workarea.live_since`) is not an orphan yet."""
    home = home or paths.amilab_home()
    since = workarea.live_since()
    found = []
    for path in _candidates(home):
        if refs.covers(path):
            continue
        tmp = workarea.TMP_SUFFIX.search(path.name)
        if tmp and pid_alive(int(tmp.group(1))):
            continue
        try:
            changed = path.lstat().st_ctime  # a rename into place sets it
        except FileNotFoundError:
            continue
        if since is not None and changed >= since:
            continue
        found.append((path, "a temporary file of a process that ended" if tmp else
                      "no record references it"))  # fmt: skip
    return found


def _candidates(home: Path) -> list[Path]:
    """Files in the artifact store and the volumes folder that a record should name."""
    found = []
    for sub in _entries(home / "artifacts"):
        found += _entries(sub) if sub.is_dir() else [sub]
    found += _entries(home / "volumes")
    return [p for p in found if not p.name.endswith(".lock") and not p.is_dir()]


def _entries(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except OSError:
        return []


def _cells(conn: sqlite3.Connection) -> Iterator[tuple[str, str, Any]]:
    """(table, row key, decoded value) of every text cell of every record table."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        if table in _NOT_RECORDS or table.startswith("sqlite_"):
            continue
        for row in conn.execute(f'SELECT * FROM "{table}"'):
            key = str(row[0])
            for cell in row[1:]:
                if not isinstance(cell, str):
                    continue
                try:
                    yield table, key, json.loads(cell)
                except ValueError:
                    yield table, key, cell


def _without_launch_images(record: dict[str, Any]) -> Any:
    amilab = record.get("Amilab")
    if not isinstance(amilab, dict):
        return amilab
    return {k: v for k, v in amilab.items() if k != LAUNCH_IMAGES}


def _collect(value: Any, key: str, refs: References) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _collect(v, key, refs)
    elif isinstance(value, list):
        for v in value:
            _collect(v, key, refs)
    elif isinstance(value, str):
        if value.startswith("/") and "\n" not in value and len(value) < 4096:
            refs.paths.setdefault(Path(os.path.normpath(value)), key)
        elif _DIGEST.fullmatch(value):
            refs.digests.setdefault(value, key)
        elif value.startswith("sha256:") and _DIGEST.fullmatch(value[7:]):
            refs.digests.setdefault(value[7:], key)


def _live_instance_disks(root: Path, refs: References) -> list[tuple[Path, str]]:
    """The qcow2 disks in the directories of instances that have not ended (or whose process
    runs: a launch before its record is committed)."""
    return [(disk, d.name) for d in _entries(root)
            if d.is_dir() and refs.instance_live(d.name, d)
            for disk in sorted(d.rglob("*.qcow2"))]  # fmt: skip


def _owner_alive(directory: Path) -> bool:
    try:
        pid = int((directory / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)
