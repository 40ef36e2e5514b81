"""What the records reference: the one answer df, prune (and fsck) give to "may this file
go?". Every record of every table in registry.sqlite is read (images, snapshots, volumes,
instances, key pairs, store tasks, …); each absolute path a record names is referenced, with
the files a qcow2 among them is copy-on-write over, and each sha256 digest a record names
protects the artifacts stored under it (an image's raw copy of a qcow2-only disk, say).

Walking every value instead of knowing each table's fields keeps this right when a table or
field is added: a record that names a file keeps it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import paths, statedb
from builder.disk.backing import backing_chain
from builder.pids import pid_alive

_DIGEST = re.compile(r"[0-9a-f]{64}")
# an instance directory may go once its instance has ended (or never had a record)
ENDED = ("terminated",)


@dataclass
class References:
    paths: set[Path] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)
    instances: dict[str, str] = field(default_factory=dict)  # instance ID -> state name

    def covers(self, path: Path) -> bool:
        """Whether a record needs `path`: named itself, under a named folder, or stored
        under a digest a record names."""
        if path in self.paths or any(p in self.paths for p in path.parents):
            return True
        digest = path.name[:64]
        return bool(_DIGEST.fullmatch(digest)) and digest in self.digests

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
    if not db.exists():
        return refs
    conn = statedb.connect(db)
    try:
        for table, record in _records(conn):
            if tables is not None and table not in tables:
                continue
            _collect(record, refs)
            if table == "instances" and isinstance(record, dict):
                state = (record.get("State") or {}).get("Name", "")
                refs.instances[str(record.get("InstanceId", ""))] = state
    finally:
        conn.close()
    # a record that names a folder the stores live in (the home itself, say) must not make
    # every file in it "referenced": only names below those folders count
    stores = [home / sub / "x" for sub in ("artifacts", "volumes", "instances", "work")]
    stores += [home / "logs" / "instances" / "x", paths.cache_dir() / "x" / "x"]
    refs.paths = {p for p in refs.paths if not any(s.is_relative_to(p) for s in stores)}
    for p in list(refs.paths):
        if p.suffix == ".qcow2":
            refs.paths.update(backing_chain(p))
    return refs


def _records(conn: sqlite3.Connection) -> Iterator[tuple[str, Any]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
        if "record" not in columns:
            continue
        for (text,) in conn.execute(f'SELECT record FROM "{table}"'):
            try:
                yield table, json.loads(text)
            except (TypeError, ValueError):
                continue


def _collect(value: Any, refs: References) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _collect(v, refs)
    elif isinstance(value, list):
        for v in value:
            _collect(v, refs)
    elif isinstance(value, str):
        if value.startswith("/") and "\n" not in value and len(value) < 4096:
            refs.paths.add(Path(value))
        elif _DIGEST.fullmatch(value):
            refs.digests.add(value)
        elif value.startswith("sha256:") and _DIGEST.fullmatch(value[7:]):
            refs.digests.add(value[7:])


def _owner_alive(directory: Path) -> bool:
    try:
        pid = int((directory / "owner.pid").read_text().strip())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)
