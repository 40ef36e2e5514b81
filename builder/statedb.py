"""The one way amilab opens its state database (registry.sqlite: images, volumes, snapshots,
key pairs, instances, store tasks), so every table gets the same durability and the same
behaviour under many writers: WAL (readers never wait for a writer, a writer never waits
for readers), `synchronous=FULL` (a committed record survives a power cut, not only a
killed process), and a busy timeout long enough for the slowest transaction, since several
CLI processes and the API server's threads write to one file.

Every change goes through `session(path, write=True)`: one `BEGIN IMMEDIATE` transaction,
which takes the write lock before its first read. A DEFERRED transaction that reads and
then writes fails at once with SQLITE_BUSY (busy timeout or not) when another connection
committed after its read; one that takes the lock first waits its turn instead. A session
opened inside another on the same file (in the same thread) joins it, so a check over
several tables (no image names this snapshot) and the change it allows are one step."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

BUSY_TIMEOUT_S = 60.0

# the write transaction this thread (or task) holds: (database path, its connection)
_current: ContextVar[tuple[Path, sqlite3.Connection] | None] = ContextVar(
    "amilab_statedb_current", default=None
)


def connect(path: Path, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout)
    # journal_mode is persistent in the file; asking again is cheap and makes old homes WAL
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


@contextmanager
def session(path: Path, *, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection for one unit of work: with `write`, one IMMEDIATE transaction committed
    at the end (rolled back on an exception); without, reads in autocommit (each statement
    sees the latest commit). Inside a write session on the same file, the caller joins it."""
    held = _current.get()
    if held is not None and held[0] == path:
        yield held[1]
        return
    conn = connect(path)
    token = None
    try:
        if write:
            conn.execute("BEGIN IMMEDIATE")
            token = _current.set((path, conn))
        yield conn
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        if token is not None:
            _current.reset(token)
        conn.close()
