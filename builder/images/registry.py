"""The local catalogue of AMIs, AKIs and ARIs (SQLite under $AMILAB_HOME) and their artifacts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from builder import paths, statedb
from builder.errors import BadInput
from builder.images.records import (
    IMAGE_TYPES,
    ImageRecord,
    now_iso,
    record_from_dict,
    record_to_dict,
)
from builder.images.shapes import account_id
from builder.state import workarea

# the names callers have always imported from here
__all__ = [
    "IMAGE_TYPES",
    "ImageRecord",
    "Registry",
    "account_id",
    "check_name_free",
    "id_prefix",
    "now_iso",
    "store_artifact",
]

_PREFIX = {"machine": "ami", "kernel": "aki", "ramdisk": "ari"}

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY,
    image_type TEXT NOT NULL,
    name TEXT NOT NULL,
    creation_date TEXT NOT NULL,
    record TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS images_name ON images(name, creation_date)",
)


class Registry:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or paths.amilab_home()
        self.path = self.home / "registry.sqlite"

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A session on the registry (`statedb.session`): with `write`, one IMMEDIATE
        transaction, so what a change reads is what it writes over."""
        with statedb.session(self.path, write=write) as conn:
            for statement in _SCHEMA:  # not executescript: it would commit a transaction
                conn.execute(statement)
            yield conn

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction that the registry's and the record tables' calls made
        inside it (in this thread) join: a check and the change it allows as one step."""
        return statedb.session(self.path, write=True)

    def register(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """Register several images in one transaction; an existing ID is kept as it is
        (registered images never change), and the stored record is returned for it."""
        out = []
        with self._connect(write=True) as conn:  # the lookups and inserts are one step
            for rec in records:
                row = conn.execute(
                    "SELECT record FROM images WHERE image_id = ?", (rec.image_id,)
                ).fetchone()
                out.append(_from_json(row[0]) if row else _insert(conn, rec))
        return out

    def get(self, image_id: str) -> ImageRecord | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT record FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
        return _from_json(row[0]) if row else None

    def find(self, ref: str, image_type: str | None = None) -> ImageRecord:
        """An image by ID, or the newest one with that name; BadInput if none."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT record FROM images WHERE image_id = ? "
                "UNION ALL SELECT record FROM ("
                "SELECT record FROM images WHERE name = ? AND (? IS NULL OR image_type = ?) "
                "ORDER BY creation_date DESC, rowid DESC LIMIT 1)",
                (ref, ref, image_type, image_type),
            ).fetchone()
        if not row:
            what = f"{image_type} image" if image_type else "image"
            raise BadInput(f"{ref}: no such {what} in the registry ({self.path})")
        rec = _from_json(row[0])
        if image_type and rec.image_type != image_type:
            raise BadInput(f"{ref}: is a {rec.image_type} image, not a {image_type} image")
        return rec

    def list(self, image_type: str | None = None) -> list[ImageRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record FROM images WHERE ? IS NULL OR image_type = ? "
                "ORDER BY creation_date, rowid",
                (image_type, image_type),
            ).fetchall()
        return [_from_json(r[0]) for r in rows]

    def update(self, image_id: str, change: Callable[[ImageRecord], None]) -> ImageRecord:
        """Change an image's attributes (tags, launch permissions) in one transaction; what
        identifies the image (disk, kernel, ramdisk, launch settings) stays as it is."""
        with self._connect(write=True) as conn:
            row = conn.execute(
                "SELECT record FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
            if not row:
                raise BadInput(f"{image_id}: no such image in the registry ({self.path})")
            rec = _from_json(row[0])
            change(rec)
            conn.execute(
                "UPDATE images SET record = ? WHERE image_id = ?",
                (_to_json(rec), image_id),
            )
        return rec

    def remove(self, image_id: str) -> bool:
        """Drop an image's record (deregistration); its artifacts stay, as EBS snapshots do."""
        with self._connect(write=True) as conn:
            cur = conn.execute("DELETE FROM images WHERE image_id = ?", (image_id,))
        return cur.rowcount > 0

    def register_new(self, rec: ImageRecord) -> ImageRecord:
        """Register an image under a name no other machine image of this registry has
        (EC2's rule for register-image, copy-image and restore); BadInput if it is taken."""
        with self._connect(write=True) as conn:  # the name check and the insert are one step
            taken = conn.execute(  # a failed image keeps no name (EC2 drops failed AMIs)
                "SELECT image_id FROM images WHERE name = ? AND image_type = ? "
                "AND json_extract(record, '$.state') IS NOT 'failed'",
                (rec.name, rec.image_type),
            ).fetchone()
            if taken:
                raise BadInput(f"name {rec.name!r} is already in use by {taken[0]}")
            if conn.execute("SELECT 1 FROM images WHERE image_id = ?", (rec.image_id,)).fetchone():
                raise BadInput(f"{rec.image_id} is already registered")
            return _insert(conn, rec)


def check_name_free(registry: Registry, name: str, image_type: str = "machine") -> None:
    """Early refusal of a taken name, before any long work (register_new checks again)."""
    for rec in registry.list(image_type):
        if rec.name == name and rec.state != "failed":
            raise BadInput(f"name {name!r} is already in use by {rec.image_id}")


def _insert(conn: sqlite3.Connection, rec: ImageRecord) -> ImageRecord:
    """Store a new row; the registration time and owner are filled in here."""
    if not rec.creation_date:
        rec.creation_date = now_iso()
    if not rec.owner_id:
        rec.owner_id = account_id()
    conn.execute(
        "INSERT INTO images VALUES (?, ?, ?, ?, ?)",
        (rec.image_id, rec.image_type, rec.name, rec.creation_date, _to_json(rec)),
    )
    return rec


def _to_json(rec: ImageRecord) -> str:
    return json.dumps(record_to_dict(rec), sort_keys=True)


def _from_json(text: str) -> ImageRecord:
    """A row of either shape (see records.py): old rows read back as typed records too."""
    return record_from_dict(json.loads(text))


def store_artifact(src: Path, digest: str, suffix: str) -> Path:
    """Move a finished file into the digest-addressed store, durably (`workarea.place`: fsync,
    rename, fsync the directory), so the record that names it can be committed after; an
    identical one already there is kept (same digest, same bytes) and the new copy dropped."""
    dest = paths.artifacts_dir() / digest[:2] / f"{digest}{suffix}"
    if dest.exists():
        src.unlink()
        return dest
    return workarea.place(src, dest)


def id_prefix(image_type: str) -> str:
    return _PREFIX[image_type]
