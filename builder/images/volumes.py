"""EBS volumes and snapshots, as records in the registry beside the images.

A snapshot is immutable: a sparse raw file in the digest-addressed artifact store (the one an
EBS-backed AMI's mapping names is the AMI's own disk, `snap-` + the disk digest's first 17
hex digits, made a record the first time something refers to it). A volume is a qcow2 file of
its own under `$AMILAB_HOME/volumes/`, copy-on-write over the snapshot it was made from, so a
volume costs only what its instance writes, and writing it never changes the snapshot.
Snapshotting a volume flattens it (qemu-img convert) into a new artifact; its ID is new every
time, as EC2's are. Refusals carry EC2's error code at the start of the message (exit 2).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from builder import paths
from builder.disk import qemu_img
from builder.disk.backing import backing_chain
from builder.errors import BadInput
from builder.ids import is_id, random_id, sparse_sha256
from builder.images.image_files import image_file
from builder.images.records import ImageRecord, now_iso
from builder.images.registry import Registry, store_artifact
from builder.images.tables import JsonTable, Row
from builder.state import pending, workarea
from builder.state.diskfull import allocated, require_space

GIB = 1 << 30
IMAGE_VOLUME = "vol-ffffffff"  # what EC2 shows as the source volume of a registered image's
DEFAULT_ZONE = "us-east-1a"
VOLUME_TYPES = ("standard", "gp2", "gp3", "io1", "io2", "st1", "sc1")


def volumes() -> JsonTable:
    return JsonTable("volumes", "volume")


def snapshots() -> JsonTable:
    return JsonTable("snapshots", "snapshot")


def volumes_dir() -> Path:
    return paths.amilab_home() / "volumes"


def volume_path(volume: Row) -> Path:
    return Path(volume["Amilab"]["Path"])


def snapshot_path(snapshot: Row) -> Path:
    return Path(snapshot["Amilab"]["Path"])


def public(row: Row) -> Row:
    """The AWS shape: without amilab's own bookkeeping."""
    return {k: v for k, v in row.items() if k != "Amilab"}


# ---------------------------------------------------------------------- snapshots


def _image_root_snapshot_id(image: ImageRecord) -> str | None:
    for m in image.block_device_mappings:
        if m.get("DeviceName") == image.root_device_name and "Ebs" in m:
            return str(m["Ebs"].get("SnapshotId") or "") or None
    return None


def image_snapshot(image: ImageRecord) -> Row:
    """The snapshot behind an EBS-backed AMI's root device (made a record on first use)."""
    if image.root_device_type != "ebs":
        raise BadInput(f"{image.image_id} is not EBS-backed (its root is {image.root_device_type})")
    snap_id = _image_root_snapshot_id(image)
    if snap_id is None:
        raise BadInput(f"{image.image_id}: its block device mapping names no root snapshot")
    if (found := snapshots().get(snap_id)) is not None:
        return found
    disk = image_file(image)
    row: Row = {
        "SnapshotId": snap_id,
        "VolumeId": IMAGE_VOLUME,
        "State": "completed",
        "Progress": "100%",
        "StartTime": image.creation_date or now_iso(),
        "VolumeSize": max(1, math.ceil(disk.stat().st_size / GIB)),
        "Description": f"root of {image.image_id} ({image.name})",
        "Encrypted": False,
        "OwnerId": image.owner_id,
        "Tags": [],
        "Amilab": {"Path": str(disk), "Bytes": disk.stat().st_size, "Digest": image.digest},
    }
    return snapshots().ensure(snap_id, row)  # a concurrent launch may make it at once


def find_snapshot(snapshot_id: str) -> Row:
    """A snapshot record, or the root snapshot of the registered image that names it."""
    if (found := snapshots().get(snapshot_id)) is not None:
        return found
    for image in Registry().list("machine"):
        if _image_root_snapshot_id(image) == snapshot_id and image.root_device_type == "ebs":
            return image_snapshot(image)
    raise BadInput(f"InvalidSnapshot.NotFound: The snapshot '{snapshot_id}' does not exist.")


def create_snapshot(volume_id: str, description: str = "") -> Row:
    """An immutable copy of a volume as it is now (the caller makes sure nothing writes it
    meanwhile: a stopped instance, or a guest that synced). Pending while it is copied;
    on failure nothing is left."""
    vol = volumes().find(volume_id, "InvalidVolume.NotFound")
    require_space(paths.work_root(), snapshot_estimate(vol), f"a snapshot of {volume_id}")
    snap_id = random_id("snap")
    row: Row = {
        "SnapshotId": snap_id,
        "VolumeId": volume_id,
        "State": "pending",
        "Progress": "0%",
        "StartTime": now_iso(),
        "VolumeSize": vol["Size"],
        "Description": description,
        "Encrypted": False,
        "OwnerId": _owner(),
        "Tags": [],
        "Amilab": {"Owner": pending.owner()},  # a dead owner's snapshot ends `error`
    }
    snapshots().insert(snap_id, row)
    work = workarea.new_dir(f"snapshot-{snap_id}")
    try:
        raw = work / "volume.raw"
        # -U: a running instance's QEMU holds the volume (create-image --no-reboot)
        qemu_img.convert(volume_path(vol), raw, src_format="qcow2", out_format="raw",
                         force_share=True)  # fmt: skip
        digest = sparse_sha256(raw)
        size = raw.stat().st_size
        stored = store_artifact(raw, digest, ".raw")

        def done(r: Row) -> None:
            r["State"], r["Progress"] = "completed", "100%"
            r["Amilab"] = {"Path": str(stored), "Bytes": size, "Digest": digest}

        return snapshots().update(snap_id, done)
    except BaseException:
        snapshots().delete(snap_id)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def snapshot_estimate(vol: Row) -> int:
    """What a snapshot of `vol` will occupy at most: the blocks its instance wrote plus
    those of the snapshot it was made from (the flattened raw file is sparse)."""
    path = volume_path(vol)
    return allocated(path) + sum(allocated(b) for b in backing_chain(path))


def copy_snapshot(snapshot_id: str, description: str | None = None) -> Row:
    src = find_snapshot(snapshot_id)
    if src["State"] != "completed":
        raise BadInput(f"IncorrectState: snapshot {snapshot_id} is {src['State']}")
    row = {**src, "SnapshotId": random_id("snap"), "StartTime": now_iso(), "Tags": []}
    row["Description"] = description if description is not None else f"Copied from {snapshot_id}"
    row["OwnerId"] = _owner()
    return snapshots().insert(row["SnapshotId"], row)


def images_using(snapshot_id: str) -> list[str]:
    return [
        image.image_id
        for image in Registry().list("machine")
        if any((m.get("Ebs") or {}).get("SnapshotId") == snapshot_id
               for m in image.block_device_mappings)
    ]  # fmt: skip


def delete_snapshot(snapshot_id: str) -> Row:
    """The check that no image names the snapshot and the deletion are one transaction, so
    a RegisterImage of it meanwhile either comes first (InUse) or finds it gone."""
    with Registry().transaction():
        snap = find_snapshot(snapshot_id)
        if users := images_using(snapshot_id):
            raise BadInput(
                f"InvalidSnapshot.InUse: The snapshot {snapshot_id} is currently in use by "
                f"{', '.join(users)}"
            )
        if not snapshots().delete(snapshot_id):  # the artifact stays: others may share it
            raise BadInput(
                f"InvalidSnapshot.NotFound: The snapshot '{snapshot_id}' does not exist."
            )
    return snap


def describe_snapshots(ids: list[str] | None = None) -> list[Row]:
    if ids:
        return [public(find_snapshot(i)) for i in ids]
    return [public(s) for s in snapshots().list()]


# ------------------------------------------------------------------------ volumes


def create_volume(
    size_gib: int | None = None,
    snapshot_id: str | None = None,
    zone: str = DEFAULT_ZONE,
    volume_type: str = "gp2",
    tags: dict[str, str] | None = None,
) -> Row:
    """An empty volume of `size_gib`, or one over a snapshot (at least its size)."""
    if volume_type not in VOLUME_TYPES:
        raise BadInput(
            f"InvalidParameterValue: volume type {volume_type!r}; "
            f"allowed: {', '.join(VOLUME_TYPES)}"
        )
    snap = find_snapshot(snapshot_id) if snapshot_id else None
    if snap is None and size_gib is None:
        raise BadInput(
            "MissingParameter: The request must contain the parameter size or snapshotId"
        )
    if size_gib is not None and not 1 <= size_gib <= 16384:
        raise BadInput(f"InvalidParameterValue: size {size_gib} GiB: must be 1-16384")
    if snap is not None:
        snap_bytes = int(snap["Amilab"].get("Bytes") or snap["VolumeSize"] * GIB)
        least = math.ceil(snap_bytes / GIB)
        if size_gib is not None and size_gib < least:
            raise BadInput(
                f"InvalidParameterValue: Volume of {size_gib}GiB is smaller than snapshot "
                f"'{snap['SnapshotId']}', expect size >= {least}GiB"
            )
    vol_id = random_id("vol")
    directory = volumes_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{vol_id}.qcow2"
    if snap is not None:
        gib = size_gib if size_gib is not None else least
    else:
        assert size_gib is not None
        gib = size_gib
    row: Row = {
        "VolumeId": vol_id,
        "Size": gib,
        "SnapshotId": snap["SnapshotId"] if snap else "",
        "AvailabilityZone": zone,
        "State": "creating",
        "CreateTime": now_iso(),
        "VolumeType": volume_type,
        "Encrypted": False,
        "Attachments": [],
        "Tags": [{"Key": k, "Value": v} for k, v in sorted((tags or {}).items())],
        # creating until its file is on disk; a dead owner's volume ends `error`
        "Amilab": {"Path": str(path), "Owner": pending.owner()},
    }
    volumes().insert(vol_id, row)
    tmp = workarea.new_dir(f"volume-{vol_id}")
    try:
        made = tmp / path.name
        if snap is not None:
            size = size_gib * GIB if size_gib is not None else snap_bytes
            qemu_img.create(made, "qcow2", size=size, backing=snapshot_path(snap),
                            backing_format="raw")  # fmt: skip
        else:
            qemu_img.create(made, "qcow2", size=gib * GIB)
        workarea.place(made, path, mode=None)

        def done(r: Row) -> None:
            r["State"] = "available"
            r["Amilab"].pop("Owner", None)

        return volumes().update(vol_id, done)
    except BaseException:
        volumes().delete(vol_id)
        path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def attach(
    volume_id: str,
    instance_id: str,
    device: str,
    delete_on_termination: bool,
    state: str = "attached",
    zone: str | None = None,
) -> Row:
    """Record an attachment (`attaching` while a running instance's guest gets the device);
    the instance side decides whether it may happen now. `zone`: the instance's, which must
    be the volume's, as on EC2."""

    def change(v: Row) -> None:
        if v["State"] != "available":
            raise BadInput(f"VolumeInUse: {volume_id} is already attached to an instance")
        if zone is not None and v["AvailabilityZone"] != zone:
            raise BadInput(
                f"InvalidVolume.ZoneMismatch: The volume '{volume_id}' is not in the same "
                f"availability zone as instance '{instance_id}'"
            )
        v["State"] = "in-use"
        v["Attachments"] = [{
            "VolumeId": volume_id, "InstanceId": instance_id, "Device": device,
            "State": state, "AttachTime": now_iso(),
            "DeleteOnTermination": delete_on_termination,
        }]  # fmt: skip

    return volumes().update(volume_id, change, "InvalidVolume.NotFound")


def attachment_state(volume_id: str, state: str) -> Row:
    """An attachment's state as it moves (attaching → attached, attached → detaching)."""

    def change(v: Row) -> None:
        if v["State"] == "in-use" and v["Attachments"]:
            v["Attachments"][0]["State"] = state

    return volumes().update(volume_id, change, "InvalidVolume.NotFound")


def detach(volume_id: str, instance_id: str | None = None) -> Row:
    def change(v: Row) -> None:
        if v["State"] != "in-use":
            raise BadInput(f"IncorrectState: {volume_id} is {v['State']}, not in-use")
        if instance_id and v["Attachments"][0]["InstanceId"] != instance_id:
            raise BadInput(
                f"InvalidAttachment.NotFound: {volume_id} is not attached to {instance_id}"
            )
        v["State"], v["Attachments"] = "available", []

    return volumes().update(volume_id, change, "InvalidVolume.NotFound")


def delete_volume(volume_id: str) -> Row:
    """The state check and the deletion are one transaction (an attach meanwhile comes
    first, and the volume is in use, or finds it gone); the file goes once it is gone."""
    with Registry().transaction():
        vol = volumes().find(volume_id, "InvalidVolume.NotFound")
        if vol["State"] == "in-use":
            instance = vol["Attachments"][0]["InstanceId"]
            raise BadInput(f"VolumeInUse: Volume {volume_id} is currently attached to {instance}")
        if not volumes().delete(volume_id):
            raise BadInput(f"InvalidVolume.NotFound: The volume ID '{volume_id}' does not exist")
    volume_path(vol).unlink(missing_ok=True)
    return vol


def describe_volumes(ids: list[str] | None = None) -> list[Row]:
    if ids:
        return [public(volumes().find(i, "InvalidVolume.NotFound")) for i in ids]
    return [public(v) for v in volumes().list()]


def check_id(value: str, prefix: str, code: str) -> str:
    if not is_id(value, prefix) and not value.startswith(f"{prefix}-"):
        raise BadInput(f'{code}: Invalid id: "{value}"')
    return value


def _owner() -> str:
    from builder.images.shapes import account_id

    return account_id()


def volume_size_bytes(volume: Row) -> int:
    info: dict[str, Any] = qemu_img.info(volume_path(volume), "qcow2")
    return int(info["virtual-size"])
