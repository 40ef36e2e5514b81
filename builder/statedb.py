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
several tables (no image names this snapshot) and the change it allows are one step.

Within one process (the API server's threads) writers also queue on a lock of their own
before they ask SQLite: SQLite's busy handler polls with sleeps growing to 100 ms, so
under many writers a thread could wait rounds for no reason (and the unlucky ones many);
the lock hands the write over in turn, at once. Between processes SQLite's lock remains."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

BUSY_TIMEOUT_S = 60.0

_writers: dict[Path, threading.Lock] = {}  # per database file: this process's writer turn
_writers_lock = threading.Lock()


def _forget_turns() -> None:
    """A child forked while another thread held a turn starts with none held (its copy of
    that lock would stay locked for good)."""
    global _writers_lock
    _writers.clear()
    _writers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_turns)

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
    if not write:
        with _open(path, write=False) as conn:
            yield conn
        return
    with _open(path, write=True) as conn:
        token = _current.set((path, conn))
        try:
            yield conn
        finally:
            _current.reset(token)


def _writer_turn(path: Path) -> threading.Lock:
    with _writers_lock:
        return _writers.setdefault(path, threading.Lock())


@contextmanager
def _open(path: Path, write: bool) -> Iterator[sqlite3.Connection]:
    conn = connect(path)
    try:
        if not write:
            yield conn
            conn.commit()
            return
        with _writer_turn(path):  # the connection is opened outside the turn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
    finally:
        conn.close()
