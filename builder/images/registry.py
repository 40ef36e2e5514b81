"""The local catalogue of AMIs, AKIs and ARIs (SQLite under $AMILAB_HOME) and their artifacts."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import BadInput

IMAGE_TYPES = ("machine", "kernel", "ramdisk")
_PREFIX = {"machine": "ami", "kernel": "aki", "ramdisk": "ari"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY,
    image_type TEXT NOT NULL,
    name TEXT NOT NULL,
    creation_date TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_name ON images(name, creation_date);
"""


@dataclass
class ImageRecord:
    """One registered image. Field names follow EC2; `extra` holds amilab's own details."""

    image_id: str
    image_type: str
    name: str
    architecture: str = "x86_64"
    description: str = ""
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    virtualization_type: str | None = None
    root_device_name: str | None = None
    root_device_type: str | None = None
    block_device_mappings: list[dict[str, Any]] = field(default_factory=list)
    state: str = "available"
    image_location: str = ""
    creation_date: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    kernel_release: str | None = None
    package_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Who registered it and who may launch it (EC2's OwnerId and launchPermission attribute).
    # Records written before these fields existed read back with the defaults.
    owner_id: str = ""
    public: bool = False
    launch_permissions: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The `aws ec2 describe-images` shape."""
        out: dict[str, Any] = {
            "ImageId": self.image_id,
            "ImageType": self.image_type,
            "Name": self.name,
            "Architecture": self.architecture,
            "KernelId": self.kernel_id,
            "RamdiskId": self.ramdisk_id,
            "VirtualizationType": self.virtualization_type,
            "RootDeviceName": self.root_device_name,
            "RootDeviceType": self.root_device_type,
            "BlockDeviceMappings": self.block_device_mappings,
            "State": self.state,
            "ImageLocation": self.image_location,
            "CreationDate": self.creation_date,
            "Description": self.description,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(self.tags.items())],
        }
        if self.image_type == "kernel":
            out["KernelRelease"] = self.kernel_release
            out["PackageVersion"] = self.package_version
        if self.extra.get("locations"):
            out["Locations"] = self.extra["locations"]
        out["OwnerId"] = self.owner_id or account_id()
        out["Public"] = self.public
        out["LaunchPermissions"] = [{"UserId": a} for a in self.launch_permissions] + (
            [{"Group": "all"}] if self.public else []
        )
        return out


def account_id() -> str:
    """This user's 12-digit account ID: AMILAB_ACCOUNT_ID, or one derived from the uid so it
    stays the same across sessions without configuration."""
    if configured := os.environ.get("AMILAB_ACCOUNT_ID"):
        if not (len(configured) == 12 and configured.isdigit()):
            raise BadInput(f"AMILAB_ACCOUNT_ID={configured!r}: expected 12 digits")
        return configured
    digest = hashlib.sha256(f"amilab-account:{os.getuid()}".encode()).hexdigest()
    return f"{int(digest, 16) % 10**12:012d}"


def root_ebs_mapping(device: str, disk_digest: str, size: int) -> list[dict[str, Any]]:
    """The root volume of an EBS-backed image as describe-images shows it; the snapshot ID
    derives from the disk's digest, as the AMI's own ID does."""
    return [
        {
            "DeviceName": device,
            "Ebs": {
                "SnapshotId": "snap-" + disk_digest[:17],
                "VolumeSize": math.ceil(size / (1 << 30)),
                "VolumeType": "standard",
                "DeleteOnTermination": True,
                "Encrypted": False,
            },
        }
    ]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Registry:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or paths.amilab_home()
        self.path = self.home / "registry.sqlite"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.home.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.executescript(_SCHEMA)
            yield conn
            conn.commit()
        finally:
            conn.close()

    def register(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """Register several images in one transaction; an existing ID is kept as it is
        (registered images never change), and the stored record is returned for it."""
        out = []
        with self._connect() as conn:
            for rec in records:
                if not rec.creation_date:
                    rec.creation_date = now_iso()
                if not rec.owner_id:
                    rec.owner_id = account_id()
                row = conn.execute(
                    "SELECT record FROM images WHERE image_id = ?", (rec.image_id,)
                ).fetchone()
                if row:
                    out.append(_from_json(row[0]))
                    continue
                conn.execute(
                    "INSERT INTO images VALUES (?, ?, ?, ?, ?)",
                    (
                        rec.image_id,
                        rec.image_type,
                        rec.name,
                        rec.creation_date,
                        json.dumps(asdict(rec), sort_keys=True),
                    ),
                )
                out.append(rec)
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
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT record FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
            if not row:
                raise BadInput(f"{image_id}: no such image in the registry ({self.path})")
            rec = _from_json(row[0])
            change(rec)
            conn.execute(
                "UPDATE images SET record = ? WHERE image_id = ?",
                (json.dumps(asdict(rec), sort_keys=True), image_id),
            )
        return rec

    def remove(self, image_id: str) -> bool:
        """Drop an image's record (deregistration); its artifacts stay, as EBS snapshots do."""
        with self._connect() as conn:
            cur = conn.execute("DELETE FROM images WHERE image_id = ?", (image_id,))
        return cur.rowcount > 0

    def register_new(self, rec: ImageRecord) -> ImageRecord:
        """Register an image under a name no other machine image of this registry has
        (EC2's rule for register-image, copy-image and restore); BadInput if it is taken."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the name check and the insert are one step
            taken = conn.execute(
                "SELECT image_id FROM images WHERE name = ? AND image_type = ?",
                (rec.name, rec.image_type),
            ).fetchone()
            if taken:
                raise BadInput(f"name {rec.name!r} is already in use by {taken[0]}")
            if conn.execute("SELECT 1 FROM images WHERE image_id = ?", (rec.image_id,)).fetchone():
                raise BadInput(f"{rec.image_id} is already registered")
            if not rec.creation_date:
                rec.creation_date = now_iso()
            if not rec.owner_id:
                rec.owner_id = account_id()
            conn.execute(
                "INSERT INTO images VALUES (?, ?, ?, ?, ?)",
                (
                    rec.image_id,
                    rec.image_type,
                    rec.name,
                    rec.creation_date,
                    json.dumps(asdict(rec), sort_keys=True),
                ),
            )
        return rec


def _from_json(text: str) -> ImageRecord:
    return ImageRecord(**json.loads(text))


def store_artifact(src: Path, digest: str, suffix: str) -> Path:
    """Move a finished file into the digest-addressed store; an identical one already there
    is kept (same digest, same bytes) and the new copy dropped."""
    dest_dir = paths.artifacts_dir() / digest[:2]
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{digest}{suffix}"
    if dest.exists():
        src.unlink()
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    try:
        os.rename(src, tmp)
    except OSError:  # another filesystem: copy keeping holes
        subprocess.run(["cp", "--sparse=always", str(src), str(tmp)], check=True)
        src.unlink()
    os.chmod(tmp, 0o444)
    os.rename(tmp, dest)
    return dest


def id_prefix(image_type: str) -> str:
    return _PREFIX[image_type]
