"""Store and restore an AMI as one compressed object, as CreateStoreImageTask and
CreateRestoreImageTask do: `<path>/<ami-id>.bin` in a directory or an S3 bucket.

The object is a gzip-compressed tar stream (the same one-pass machinery as bundles):
`amilab-image.json` (the image's record with its tags, and those of its kernel and ramdisk
when they are included), `disk.raw` (a sparse member), optionally `kernel.vmlinuz` and
`ramdisk.initrd`, and last `amilab-digests.json` with each member's size and SHA-256. The
gzip CRC covers the whole stream, the trailer each member, and the restored disk must also
give the digest recorded at its build. The image's name, description, creation date, owner
and the store time are also the object's metadata (S3 user metadata; beside a directory's
object, `<object>.metadata.json`).

A store is a task with a state (InProgress, Completed, Failed) and a percentage, kept in the
registry database so `amilab store-tasks` can show it from elsewhere while it runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import BadInput
from builder.ids import file_sha256, sparse_sha256
from builder.images import factory, sparsetar, transfer
from builder.images.image_files import image_file, work_dir
from builder.images.objects import (
    FORMAT,
    TRAILER_MEMBER,
    Member,
    Sink,
    json_object,
    logical_size,
    receive,
    tar_stream,
)
from builder.images.records import record_from_dict, record_to_dict
from builder.images.registry import (
    ImageRecord,
    Registry,
    account_id,
    check_name_free,
    now_iso,
    store_artifact,
)
from builder.images.store_tasks import StoreTask, TaskLog
from builder.images.targets import parse_bucket
from builder.state.diskfull import require_space

META_MEMBER = "amilab-image.json"
DISK_MEMBER = "disk.raw"
KERNEL_MEMBER = "kernel.vmlinuz"
RAMDISK_MEMBER = "ramdisk.initrd"


# ---------------------------------------------------------------------------- store


def _object_metadata(rec: ImageRecord, store_time: str) -> dict[str, str]:
    # S3 user metadata is ASCII text: non-ASCII names and descriptions are JSON-escaped
    def ascii_(s: str) -> str:
        return json.dumps(s)[1:-1] if not s.isascii() else s

    return {
        "ami-name": ascii_(rec.name),
        "ami-description": ascii_(rec.description),
        "ami-creation-date": rec.creation_date,
        "ami-owner-account": rec.owner_id or account_id(),
        "ami-store-date": store_time,
        "amilab-format": FORMAT,
    }


def store_image(
    ref: str,
    bucket: str,
    *,
    endpoint_url: str | None = None,
    with_kernel: bool = False,
    progress: Callable[[int], None] | None = None,
    recorded: Callable[[], None] | None = None,
) -> StoreTask:
    """CreateStoreImageTask, run to its end in this process; the task's state is visible
    to `store-tasks` meanwhile. Raises (and records Failed) on any error. `recorded` is
    called once the task is in the task log (a caller running this in a thread returns
    only then, so the task is listed as soon as its creation is answered, as on EC2)."""
    registry = Registry()
    rec = registry.find(ref, "machine")
    target = parse_bucket(bucket, endpoint_url)
    key = target.key(rec.image_id)
    store_time = now_iso()
    task = StoreTask(
        task_id=f"store-{secrets.token_hex(8)}",
        image_id=rec.image_id,
        bucket=target.url,
        object_key=key,
        start_time=store_time,
        pid=os.getpid(),
    )
    log = TaskLog()
    log.save(task)
    if recorded is not None:
        recorded()
    try:
        members = _members(registry, rec, with_kernel)
        total = sum(logical_size(m) for m in members) or 1
        meta = {
            "Format": FORMAT,
            "StoreTime": store_time,
            "Image": record_to_dict(rec),
            "Kernel": _carried(registry, rec.kernel_id if with_kernel else None),
            "Ramdisk": _carried(registry, rec.ramdisk_id if with_kernel else None),
            "Members": [m.name for m in members],
        }
        members.insert(0, Member(META_MEMBER, data=json.dumps(meta, sort_keys=True).encode()))
        done_before = [0]
        last = [0.0]

        def report(done: int) -> None:
            pct = min(99, int(100 * (done_before[0] + done) / total))
            now = time.monotonic()
            if pct != task.progress and now - last[0] > 0.5:
                task.progress, last[0] = pct, now
                log.save(task)
            if progress:
                progress(pct)

        writer = target.writer(key, _object_metadata(rec, store_time))
        try:
            tar = transfer.threaded(tar_stream(members, report, done_before))
            transfer.pipe(transfer.compressed(tar, lambda _: None), writer.write)
            task.bytes_stored = writer.commit()
        except BaseException:
            writer.abort()
            raise
        task.state, task.progress, task.end_time = "Completed", 100, now_iso()
        log.save(task)
        return task
    except BaseException as e:
        task.state, task.end_time = "Failed", now_iso()
        task.failure_reason = str(e) or type(e).__name__
        log.save(task)
        raise


def _carried(registry: Registry, ref: str | None) -> dict[str, Any] | None:
    other = registry.get(ref) if ref else None
    return record_to_dict(other) if other else None


def _members(registry: Registry, rec: ImageRecord, with_kernel: bool) -> list[Member]:
    members = [Member(DISK_MEMBER, image_file(rec))]
    if with_kernel:
        for ref, name in ((rec.kernel_id, KERNEL_MEMBER), (rec.ramdisk_id, RAMDISK_MEMBER)):
            if ref:
                other = registry.get(ref)
                if other is None:
                    raise BadInput(f"{rec.image_id} refers to {ref}, which is not registered")
                members.append(Member(name, image_file(other)))
    return members


# -------------------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    image: ImageRecord
    kernel: ImageRecord | None = None
    ramdisk: ImageRecord | None = None
    object_key: str = ""
    seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        """The restored image's ID and the records registered, with their launch IDs."""
        image = self.image
        return {
            "ImageId": image.image_id, "ObjectKey": self.object_key,
            "KernelId": image.kernel_id, "RamdiskId": image.ramdisk_id,
            "Images": [x.describe() for x in (image, self.kernel, self.ramdisk) if x],
        }  # fmt: skip


def restore_image(
    bucket: str,
    object_key: str,
    *,
    name: str | None = None,
    endpoint_url: str | None = None,
) -> RestoreResult:
    """CreateRestoreImageTask: verify the whole object, then register its image under a new
    ID (and its kernel and ramdisk, if it carries them, under their content IDs). A name
    already in use is refused before any download; nothing is registered on any failure."""
    started = time.monotonic()
    target = parse_bucket(bucket, endpoint_url)
    registry = Registry()
    # the object is a sparse tar: its size is about what its members occupy once written
    require_space(paths.work_root(), target.size(object_key), f"the restore of {object_key}")
    work = work_dir("restore")
    sinks: dict[str, Sink] = {}
    where = f"{target.url}/{object_key}"
    try:
        paths_for = {
            DISK_MEMBER: work / "disk.raw",
            KERNEL_MEMBER: work / "kernel",
            RAMDISK_MEMBER: work / "ramdisk",
        }

        def on_member(m: sparsetar.Member) -> Sink:
            if m.name in sinks:
                raise BadInput(f"{where}: member {m.name} appears twice")
            if m.name not in (META_MEMBER, TRAILER_MEMBER, *paths_for):
                raise BadInput(f"{where}: unexpected member {m.name!r}")
            if m.name != META_MEMBER and META_MEMBER not in sinks:
                raise BadInput(f"{where}: not an amilab stored image (no {META_MEMBER} first)")
            sinks[m.name] = Sink(paths_for.get(m.name))
            return sinks[m.name]

        checked_name = [False]

        def check_name() -> None:
            if not checked_name[0] and META_MEMBER in sinks and DISK_MEMBER in sinks:
                # the metadata is whole once the next member began: refuse a taken name now
                checked_name[0] = True
                meta = json_object(sinks[META_MEMBER].mem, where)
                check_name_free(registry, name or meta["Image"]["name"])

        if name:
            check_name_free(registry, name)
        receive(target, object_key, on_member, sinks, check_name)
        if META_MEMBER not in sinks or TRAILER_MEMBER not in sinks:
            raise BadInput(f"{where}: object ends early (no {TRAILER_MEMBER}; truncated)")
        meta = json_object(sinks[META_MEMBER].mem, where)
        trailer = json_object(sinks[TRAILER_MEMBER].mem, where)
        if meta.get("Format") != FORMAT or trailer.get("Format") != FORMAT:
            raise BadInput(f"{where}: format {meta.get('Format')!r} is not {FORMAT}")
        listed = trailer.get("Members", {})
        for mname, s in sinks.items():
            if mname == TRAILER_MEMBER:
                continue
            want = listed.get(mname)
            if not want or want["SHA256"] != s.sha256.hexdigest() or want["Size"] != s.size:
                raise BadInput(f"{where}: member {mname} does not match its digest (corrupt)")
        if set(listed) != set(sinks) - {TRAILER_MEMBER}:
            raise BadInput(f"{where}: members missing from the object")
        return _register_restored(registry, meta, work, name, object_key, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _register_restored(
    registry: Registry,
    meta: dict[str, Any],
    work: Path,
    name: str | None,
    object_key: str,
    started: float,
) -> RestoreResult:
    src = record_from_dict(meta["Image"])  # an object stored before typed settings too
    disk = work / "disk.raw"
    digest = sparse_sha256(disk)
    if src.digest and digest != src.digest:
        raise BadInput(f"{object_key}: restored disk does not give the image's digest")
    result = RestoreResult(image=src, object_key=object_key)
    related: list[tuple[ImageRecord, Path, str, str]] = []
    for key, member, suffix in (
        ("Kernel", work / "kernel", ".vmlinuz"),
        ("Ramdisk", work / "ramdisk", ".initrd"),
    ):
        if meta.get(key):
            rec = record_from_dict(meta[key])
            got = file_sha256(member)
            if rec.digest not in (None, got):
                raise BadInput(f"{object_key}: {key.lower()} does not match its digest")
            related.append((rec, member, got, suffix))
    carried = {rec.image_id for rec, *_ in related}
    for ref in (src.kernel_id, src.ramdisk_id):
        if ref and ref not in carried and registry.get(ref) is None:
            raise BadInput(
                f"{ref} is not registered here and the object does not carry it "
                "(store with --with-kernel)"
            )
    # everything checked: now move into the artifact store and register
    for rec, member, got, suffix in related:
        stored = store_artifact(member, got, suffix)
        kept = registry.register([factory.stored_at(rec, str(stored))])[0]
        if kept.image_type == "kernel":
            result.kernel = kept
        else:
            result.ramdisk = kept
    stored_disk = str(store_artifact(disk, digest, ".raw"))
    image = factory.reregistered(
        src,
        name or src.name,
        {"restored_from": object_key},
        digest=digest,
        locations={"raw": stored_disk},
        extra={"source_image_id": src.image_id, "restored_from": object_key},
    )
    result.image = registry.register_new(image)
    result.seconds = time.monotonic() - started
    return result
