"""Artifacts by reference: what a fleet cell needs (its AMI's disk, AKI, ARI) travels as
records, digests and object keys; the bytes go through an S3 bucket or a shared directory
(builder.images.targets and the object stream of builder.images.objects).

The client uploads each file once, skipping an object already there with the same digest.
Each worker downloads a file once into its own artifact store (digest-addressed, under its
AMILAB_HOME), checks it against the digest the image was registered with, and registers
the records under the client's IDs; concurrent tasks on one host wait on a file lock for
the one download.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from builder import paths
from builder.errors import BadInput
from builder.ids import file_sha256, sparse_sha256
from builder.images import objects, targets
from builder.images.records import record_from_dict, record_to_dict
from builder.images.registry import ImageRecord, Registry, store_artifact

SUFFIX = {"machine": ".raw", "kernel": ".vmlinuz", "ramdisk": ".initrd"}
DIGEST_META = "amilab-digest"


@dataclass(frozen=True)
class Artifact:
    record: str  # the image's record (JSON), registered on the worker under its ID
    fmt: str  # the locations key of the file (raw, qcow2, ...); "" for an AKI/ARI
    digest: str  # sha256 of the file, or (a raw disk) the sparse digest the image has
    sparse: bool
    key: str  # the object's key in the target
    path: str = ""  # the client's file (only the client reads it)

    @property
    def image_id(self) -> str:
        return str(json.loads(self.record)["image_id"])

    @property
    def suffix(self) -> str:
        return SUFFIX[json.loads(self.record)["image_type"]] if not self.fmt else f".{self.fmt}"


@dataclass(frozen=True)
class Needed:
    """One cell's artifacts (kernel and ramdisk before the AMI that names them)."""

    target: str  # s3://bucket/prefix or a directory
    endpoint_url: str | None
    artifacts: tuple[Artifact, ...]


def _artifact(rec: ImageRecord, target: targets.Target, path: Path, fmt: str) -> Artifact:
    sparse = rec.image_type == "machine" and fmt == "raw" and bool(rec.digest)
    digest = rec.digest if (sparse or rec.image_type != "machine") and rec.digest else None
    digest = digest or file_sha256(path)
    suffix = f".{fmt}" if fmt else SUFFIX[rec.image_type]
    record = json.dumps(record_to_dict(rec), sort_keys=True)
    return Artifact(record, fmt, digest, sparse, target.key(f"{digest}{suffix}"), str(path))


def for_plan(
    target: str, endpoint_url: str | None, image: ImageRecord, kernel: ImageRecord | None,
    ramdisk: ImageRecord | None, disk: Path,
) -> Needed:  # fmt: skip
    """What a worker needs to boot this launch plan's image, kernel and ramdisk."""
    t = targets.parse_bucket(target, endpoint_url)
    fmt = next((f for f, loc in image.locations.items() if Path(loc) == disk), "")
    out = [
        _artifact(rec, t, Path(rec.image_location), "")
        for rec in (kernel, ramdisk)
        if rec is not None
    ]
    out.append(_artifact(image, t, disk, fmt or "raw"))
    return Needed(target, endpoint_url, tuple(out))


def upload(needed: list[Needed], say: Callable[[str], None]) -> int:
    """Upload every file once (skipping what the target holds with the same digest);
    returns how many were uploaded."""
    sent = 0
    seen: set[str] = set()
    for n in needed:
        t = targets.parse_bucket(n.target, n.endpoint_url)
        for a in n.artifacts:
            if a.key in seen:
                continue
            seen.add(a.key)
            if t.metadata(a.key).get(DIGEST_META) == a.digest:
                continue
            say(f"uploading {a.image_id} to {t.url}")
            objects.put_file(t, a.key, Path(a.path), {DIGEST_META: a.digest})
            sent += 1
    return sent


def _local_file(a: Artifact) -> Path:
    return paths.artifacts_dir() / a.digest[:2] / f"{a.digest}{a.suffix}"


def _verify(a: Artifact, path: Path) -> None:
    got = sparse_sha256(path) if a.sparse else file_sha256(path)
    if got != a.digest:
        raise BadInput(f"{a.key}: downloaded file's digest {got[:12]}… is not {a.digest[:12]}…")


def fetch(a: Artifact, target: targets.Target) -> Path:
    """The artifact's file in this host's artifact store, downloaded at most once: other
    tasks (threads or processes) wanting it wait on the lock and then find it there."""
    dest = _local_file(a)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():
            return dest
        work = paths.work_root()
        work.mkdir(parents=True, exist_ok=True)
        part = work / f"fetch-{a.digest}-{os.getpid()}{a.suffix}"
        try:
            objects.get_file(target, a.key, part)
            _verify(a, part)
            return store_artifact(part, a.digest, a.suffix)
        finally:
            part.unlink(missing_ok=True)


def ensure_local(needed: Needed, registry: Registry | None = None) -> None:
    """Every artifact of a cell here, registered under the client's IDs. An image already
    registered with its file present is left as it is (registered images never change)."""
    registry = registry or Registry()
    target = targets.parse_bucket(needed.target, needed.endpoint_url)
    for a in needed.artifacts:
        have = registry.get(a.image_id)
        if have is not None and _file_of(have, a.fmt).exists():
            continue
        local = str(fetch(a, target))
        rec = record_from_dict(json.loads(a.record))
        if a.fmt:
            rec = replace(rec, locations={a.fmt: local}, image_location=local)
        else:
            rec = replace(rec, image_location=local)
        if have is not None:  # registered here before, its file since removed
            registry.remove(a.image_id)
        registry.register([rec])


def _file_of(rec: ImageRecord, fmt: str) -> Path:
    return Path(rec.locations.get(fmt) or rec.image_location) if fmt else Path(rec.image_location)
