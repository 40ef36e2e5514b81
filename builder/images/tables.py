"""Registry tables whose rows are JSON records keyed by an EC2 ID: volumes, snapshots, key
pairs, instances. They live in the registry's SQLite file beside the images, so one
transaction can see both (a snapshot that a registered image refers to, say), and every
change is one `BEGIN IMMEDIATE` transaction: concurrent commands on one record serialise."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from builder import paths, statedb
from builder.errors import BadInput

Row = dict[str, Any]


class JsonTable:
    def __init__(self, table: str, what: str, home: Path | None = None) -> None:
        if not table.isidentifier():
            raise ValueError(f"table name {table!r}")
        self.table = table
        self.what = what  # for messages: "volume", "snapshot", ...
        self.home = home or paths.amilab_home()
        self.path = self.home / "registry.sqlite"

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A session on the table (`statedb.session`): with `write`, one IMMEDIATE
        transaction, joined to the one a caller holds on this file."""
        with statedb.session(self.path, write=write) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                "(id TEXT PRIMARY KEY, created REAL DEFAULT (julianday('now')), record TEXT)"
            )
            yield conn

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction that the calls made inside it (in this thread, on any
        table of this file) join: a check and the change it allows as one step."""
        return statedb.session(self.path, write=True)

    def get(self, key: str) -> Row | None:
        with self.connect() as conn:
            row = conn.execute(f"SELECT record FROM {self.table} WHERE id = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def find(self, key: str, code: str) -> Row:
        """The record, or BadInput with EC2's error code (e.g. InvalidVolume.NotFound)."""
        row = self.get(key)
        if row is None:
            raise BadInput(f"{code}: The {self.what} ID '{key}' does not exist")
        return row

    def list(self) -> list[Row]:
        with self.connect() as conn:
            rows = conn.execute(f"SELECT record FROM {self.table} ORDER BY created, rowid")
            return [json.loads(r[0]) for r in rows.fetchall()]

    def insert(self, key: str, record: Row) -> Row:
        with self.connect(write=True) as conn:
            conn.execute(
                f"INSERT INTO {self.table} (id, record) VALUES (?, ?)", (key, json.dumps(record))
            )
        return record

    def ensure(self, key: str, record: Row) -> Row:
        """Insert the record unless one with this key is there; the stored one either way
        (two callers making the same record at once both get the one that was kept)."""
        with self.connect(write=True) as conn:
            row = conn.execute(f"SELECT record FROM {self.table} WHERE id = ?", (key,)).fetchone()
            if row is not None:
                return dict(json.loads(row[0]))
            conn.execute(
                f"INSERT INTO {self.table} (id, record) VALUES (?, ?)", (key, json.dumps(record))
            )
        return record

    def update(self, key: str, change: Callable[[Row], None], code: str = "NotFound") -> Row:
        """Read, change and write one record in one transaction; `change` may raise to
        refuse (nothing is written then)."""
        with self.connect(write=True) as conn:
            row = conn.execute(f"SELECT record FROM {self.table} WHERE id = ?", (key,)).fetchone()
            if row is None:
                raise BadInput(f"{code}: The {self.what} ID '{key}' does not exist")
            record = json.loads(row[0])
            change(record)
            conn.execute(
                f"UPDATE {self.table} SET record = ? WHERE id = ?", (json.dumps(record), key)
            )
        return record

    def delete(self, key: str) -> bool:
        with self.connect(write=True) as conn:
            cur = conn.execute(f"DELETE FROM {self.table} WHERE id = ?", (key,))
        return cur.rowcount > 0
