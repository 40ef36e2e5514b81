"""EBS volumes and snapshots over builder.images.volumes and the instance operations that
attach and detach them."""

from __future__ import annotations

from typing import Any

from builder.images import volumes
from builder.images.shapes import local_account_id
from builder.images.tables import Row
from harness.api.actions import network
from harness.api.actions.common import Context, Params, Result, action, require, tag_specs, tags_of
from harness.api.actions.filters import field, filtered
from harness.api.actions.lookup import (
    find_instance,
    find_snapshot,
    find_volume,
    snapshot_visible,
    volume_owner,
)
from harness.api.errors import ApiError
from harness.instances.operations import attachments


def _set_tags(table: Any, key: str, tags: dict[str, str]) -> Row:
    def change(r: Row) -> None:
        have = tags_of(r.get("Tags"))
        have.update(tags)
        r["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(have.items())]

    return table.update(key, change)


# ------------------------------------------------------------------- volumes

_VOLUME_FIELDS = {
    "volume-id": field("VolumeId"), "status": field("State"), "size": field("Size"),
    "snapshot-id": field("SnapshotId"), "availability-zone": field("AvailabilityZone"),
    "volume-type": field("VolumeType"), "attachment.instance-id":
    field("Attachments", "InstanceId"), "attachment.device": field("Attachments", "Device"),
    "attachment.status": field("Attachments", "State"),
}  # fmt: skip


@action("CreateVolume", "InvalidParameterValue")
def create_volume(p: Params, ctx: Context) -> Result:
    zone = require(p, "AvailabilityZone")
    if zone not in network.ZONES:
        raise ApiError("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
    snap = p.get("SnapshotId")
    if snap:
        find_snapshot(snap, ctx)
    size = p.get("Size")
    row = volumes.create_volume(size, snap or None, zone, p.get("VolumeType") or "gp2",
                                tag_specs(p, "volume") or None)  # fmt: skip

    def owned(r: Row) -> None:
        r["Amilab"]["OwnerId"] = ctx.account_id

    row = volumes.volumes().update(row["VolumeId"], owned)
    return volumes.public(row)


@action("DescribeVolumes", "InvalidVolume.NotFound")
def describe_volumes(p: Params, ctx: Context) -> Result:
    ids = [find_volume(i, ctx)["VolumeId"] for i in p.get("VolumeIds") or []]
    rows = [v for v in volumes.volumes().list() if volume_owner(v) == ctx.account_id]
    if ids:
        rows = [v for v in rows if v["VolumeId"] in ids]
    items = [volumes.public(v) for v in rows]
    return {"Volumes": filtered(items, p, _VOLUME_FIELDS)}


@action("DeleteVolume", "InvalidVolume.NotFound")
def delete_volume(p: Params, ctx: Context) -> Result:
    v = find_volume(require(p, "VolumeId"), ctx)
    volumes.delete_volume(v["VolumeId"])
    return {}


@action("AttachVolume", "InvalidVolume.NotFound")
def attach_volume(p: Params, ctx: Context) -> Result:
    v = find_volume(require(p, "VolumeId"), ctx)
    rec = find_instance(require(p, "InstanceId"), ctx)
    device = require(p, "Device")
    if not device.startswith("/dev/"):
        raise ApiError("InvalidParameterValue", f"Invalid value '{device}' for unixDevice")
    return attachments.attach_volume(v["VolumeId"], rec["InstanceId"], device)


@action("DetachVolume", "InvalidVolume.NotFound")
def detach_volume(p: Params, ctx: Context) -> Result:
    v = find_volume(require(p, "VolumeId"), ctx)
    iid = p.get("InstanceId")
    if iid:
        find_instance(iid, ctx)
    force = str(p.get("Force") or "").lower() == "true"
    return attachments.detach_volume(v["VolumeId"], iid, force=force)


# ----------------------------------------------------------------- snapshots

_SNAPSHOT_FIELDS = {
    "snapshot-id": field("SnapshotId"), "volume-id": field("VolumeId"),
    "status": field("State"), "owner-id": field("OwnerId"),
    "description": field("Description"), "volume-size": field("VolumeSize"),
    "progress": field("Progress"), "start-time": field("StartTime"),
}  # fmt: skip


def _snapshot_item(s: Row) -> dict[str, Any]:
    item = volumes.public(s)
    item["OwnerId"] = item.get("OwnerId") or local_account_id()
    return item


@action("CreateSnapshot", "InvalidVolume.NotFound")
def create_snapshot(p: Params, ctx: Context) -> Result:
    v = find_volume(require(p, "VolumeId"), ctx)
    s = volumes.create_snapshot(v["VolumeId"], p.get("Description") or "")
    if tags := tag_specs(p, "snapshot"):
        s = _set_tags(volumes.snapshots(), s["SnapshotId"], tags)
    return _snapshot_item(s)


@action("CopySnapshot", "InvalidSnapshot.NotFound")
def copy_snapshot(p: Params, ctx: Context) -> Result:
    s = find_snapshot(require(p, "SourceSnapshotId"), ctx)
    if p.get("Encrypted"):
        raise ApiError("UnsupportedOperation", "encrypted copies are not made here")
    new = volumes.copy_snapshot(s["SnapshotId"], p.get("Description"))
    if tags := tag_specs(p, "snapshot"):
        new = _set_tags(volumes.snapshots(), new["SnapshotId"], tags)
    return {"SnapshotId": new["SnapshotId"], "Tags": new.get("Tags") or []}


@action("DescribeSnapshots", "InvalidSnapshot.NotFound")
def describe_snapshots(p: Params, ctx: Context) -> Result:
    ids = [find_snapshot(i, ctx)["SnapshotId"] for i in p.get("SnapshotIds") or []]
    rows = (
        [volumes.find_snapshot(i) for i in ids]
        if ids
        else [s for s in volumes.snapshots().list() if snapshot_visible(s, ctx.account_id)]
    )
    owners = {ctx.account_id if o == "self" else o for o in p.get("OwnerIds") or []}
    items = [_snapshot_item(s) for s in rows]
    if owners:
        items = [i for i in items if i["OwnerId"] in owners]
    if users := p.get("RestorableByUserIds"):
        who = {ctx.account_id if u == "self" else u for u in users}
        items = [
            i
            for i in items
            if any(
                snapshot_visible(s, u)
                for s in rows
                if s["SnapshotId"] == i["SnapshotId"]
                for u in who
            )
        ]
    return {"Snapshots": filtered(items, p, _SNAPSHOT_FIELDS)}


@action("DeleteSnapshot", "InvalidSnapshot.NotFound")
def delete_snapshot(p: Params, ctx: Context) -> Result:
    s = find_snapshot(require(p, "SnapshotId"), ctx, owned=True)
    volumes.delete_snapshot(s["SnapshotId"])
    return {}


@action("DescribeSnapshotAttribute", "InvalidSnapshot.NotFound")
def describe_snapshot_attribute(p: Params, ctx: Context) -> Result:
    s = find_snapshot(require(p, "SnapshotId"), ctx, owned=True)
    attribute = require(p, "Attribute")
    if attribute != "createVolumePermission":
        raise ApiError(
            "InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid."
        )
    shared = (s.get("Amilab") or {}).get("CreateVolumePermissions") or []
    return {"SnapshotId": s["SnapshotId"], "CreateVolumePermissions": [
        {"Group": "all"} if a == "all" else {"UserId": a} for a in shared]}  # fmt: skip


@action("ModifySnapshotAttribute", "InvalidSnapshot.NotFound")
def modify_snapshot_attribute(p: Params, ctx: Context) -> Result:
    s = find_snapshot(require(p, "SnapshotId"), ctx, owned=True)
    if (p.get("Attribute") or "createVolumePermission") != "createVolumePermission":
        raise ApiError("InvalidParameterValue", "only createVolumePermission can be modified")
    perm = p.get("CreateVolumePermission") or {}
    add = [x.get("UserId") or x.get("Group") for x in perm.get("Add") or []]
    remove = [x.get("UserId") or x.get("Group") for x in perm.get("Remove") or []]
    op = p.get("OperationType")
    extra = list(p.get("UserIds") or []) + list(p.get("GroupNames") or [])
    if extra:
        if op not in ("add", "remove"):
            raise ApiError("InvalidParameterValue", "OperationType must be add or remove")
        (add if op == "add" else remove).extend(extra)
    for a in add + remove:
        if not a or not (a == "all" or (len(a) == 12 and a.isdigit())):
            raise ApiError("InvalidParameterValue", f"Invalid value '{a}' for UserId")

    def change(r: Row) -> None:
        have = list(r["Amilab"].get("CreateVolumePermissions") or [])
        have += [a for a in add if a not in have]
        r["Amilab"]["CreateVolumePermissions"] = [a for a in have if a not in remove]

    volumes.snapshots().update(s["SnapshotId"], change, "InvalidSnapshot.NotFound")
    return {}
