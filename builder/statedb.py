"""The one way amilab opens its state database (registry.sqlite: images, volumes, snapshots,
key pairs, instances, store tasks), so every table gets the same durability and the same
behaviour under many writers: WAL (readers never wait for a writer, a writer never waits
for readers), `synchronous=FULL` (a committed record survives a power cut, not only a
killed process), and a busy timeout long enough for the slowest transaction, since several
CLI processes and the API server's threads write to one file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 60.0


def connect(path: Path, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout)
    # journal_mode is persistent in the file; asking again is cheap and makes old homes WAL
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn
