"""What the records name: every file under AMILAB_HOME that a row of the state database
mentions (images' locations, snapshots' and volumes' paths, instances' files, whatever a
table keeps), plus the files qcow2 disks are backed by (a volume or an instance's disk over a
snapshot). Gathered generically, from every table's JSON, so a table added later is covered
and fsck never calls a file an orphan because it did not know where to look."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from builder import paths, statedb

_QCOW_MAGIC = b"QFI\xfb"
# tables of the state database that are not records (fsck's own cache)
_NOT_RECORDS = ("fsck_verified",)
_CHAIN_MAX = 16  # backing files followed per disk (a loop in a broken chain ends here)


def qcow2_backing(path: Path) -> Path | None:
    """The backing file a qcow2 header names (absolute, or relative to the disk), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != _QCOW_MAGIC:
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not size:
                return None
            f.seek(offset)
            name = f.read(size).decode(errors="replace")
    except OSError:
        return None
    backing = Path(name)
    return backing if backing.is_absolute() else path.parent / backing


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _cells(conn: sqlite3.Connection) -> Iterator[tuple[str, str, Any]]:
    """(table, row key, decoded value) of every text cell of every record table."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        if table in _NOT_RECORDS or not table.isidentifier():
            continue
        for row in conn.execute(f"SELECT * FROM {table}"):
            key = str(row[0])
            for cell in row[1:]:
                if not isinstance(cell, str):
                    continue
                try:
                    yield table, key, json.loads(cell)
                except ValueError:
                    yield table, key, cell


def referenced() -> dict[Path, str]:
    """Every file under AMILAB_HOME a record names → the resource naming it."""
    home = paths.amilab_home()
    prefix = str(home).rstrip("/") + "/"
    found: dict[Path, str] = {}
    db = home / "registry.sqlite"
    if db.exists():
        with closing(statedb.connect(db)) as conn:
            for _table, key, value in _cells(conn):
                for s in _strings(value):
                    if s.startswith(prefix):
                        found.setdefault(Path(os.path.normpath(s)), key)
                    # an AMI known only as qcow2/vmdk has its raw copy cached by digest
                    if _table == "images" and isinstance(value, dict) and value.get("digest"):
                        d = str(value["digest"])
                        raw = paths.artifacts_dir() / d[:2] / f"{d}.raw"
                        found.setdefault(raw, key)
    disks = [p for p in found if p.suffix == ".qcow2"]
    instances = home / "instances"
    if instances.is_dir():
        disks += sorted(instances.rglob("*.qcow2"))
    for disk in disks:
        owner = found.get(disk) or disk.parent.name
        for _ in range(_CHAIN_MAX):
            if (backing := qcow2_backing(disk)) is None:
                break
            found.setdefault(Path(os.path.normpath(backing)), owner)
            disk = backing
    return found
