"""Digests fsck has verified, keyed by (path, inode, size, mtime): hashing a 2 GiB disk costs
seconds, and an artifact never changes once placed (it is read-only and replaced only by a
rename, which gives a new inode), so a second fsck rehashes only what changed since."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from builder import paths, statedb
from builder.ids import file_sha256, sparse_sha256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fsck_verified (
    path TEXT PRIMARY KEY, inode INTEGER, size INTEGER, mtime_ns INTEGER, digest TEXT
)"""
# suffixes whose name carries the digest of the file's own bytes, and how it is computed;
# .qcow2 and .vmdk carry the digest of the raw disk they hold, which only a conversion
# shows, so their bytes are not hashed (they were placed whole, fsynced and renamed)
_DIGEST_OF = {".raw": sparse_sha256}


def digest_function(suffix: str) -> Callable[[Path], str] | None:
    if suffix in (".qcow2", ".vmdk"):
        return None
    return _DIGEST_OF.get(suffix, file_sha256)


class DigestCache:
    def __init__(self) -> None:
        self.path = paths.amilab_home() / "registry.sqlite"
        self.hashed = 0  # files hashed by this fsck (not found in the cache)
        self.cached = 0

    def digest(self, path: Path, suffix: str) -> str | None:
        """The file's digest as its name should carry it; None for kinds not hashed."""
        compute = digest_function(suffix)
        if compute is None:
            return None
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with closing(statedb.connect(self.path)) as conn, conn:
            conn.execute(_SCHEMA)
            row = conn.execute(
                "SELECT inode, size, mtime_ns, digest FROM fsck_verified WHERE path = ?",
                (str(path),),
            ).fetchone()
        if row and tuple(row[:3]) == key:
            self.cached += 1
            return str(row[3])
        value = compute(path)
        self.hashed += 1
        with closing(statedb.connect(self.path)) as conn, conn:
            conn.execute(_SCHEMA)
            conn.execute(
                "INSERT OR REPLACE INTO fsck_verified VALUES (?, ?, ?, ?, ?)",
                (str(path), *key, value),
            )
        return value
