"""Images: describe, register, deregister, copy, create from an instance, attributes, and
the store/restore tasks — over builder.images.lifecycle/store and harness.instances."""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import AmilabError
from builder.images import lifecycle, store, store_tasks, targets
from builder.images.records import ImageRecord
from builder.images.registry import Registry
from builder.images.shapes import owner_of
from builder.state import pending
from harness.api.actions.common import (
    Context,
    Params,
    Result,
    action,
    after_reply,
    require,
    tag_specs,
)
from harness.api.actions.filters import field, filters_of, match_filters
from harness.api.actions.lookup import (
    check_image_id,
    find_instance,
    find_owned,
    find_snapshot,
    find_visible,
    visible,
)
from harness.api.errors import ApiError, from_library
from harness.instances.operations import images as instance_images

_FILTERS = {
    "image-id": field("ImageId"),
    "name": field("Name"),
    "description": field("Description"),
    "image-type": field("ImageType"),
    "architecture": field("Architecture"),
    "kernel-id": field("KernelId"),
    "ramdisk-id": field("RamdiskId"),
    "virtualization-type": field("VirtualizationType"),
    "root-device-type": field("RootDeviceType"),
    "root-device-name": field("RootDeviceName"),
    "state": field("State"),
    "owner-id": field("OwnerId"),
    "is-public": field("Public"),
    "hypervisor": field("Hypervisor"),
    "image-location": field("ImageLocation"),
    "block-device-mapping.snapshot-id": field("BlockDeviceMappings", "Ebs", "SnapshotId"),
    "block-device-mapping.device-name": field("BlockDeviceMappings", "DeviceName"),
    "block-device-mapping.volume-size": field("BlockDeviceMappings", "Ebs", "VolumeSize"),
}


def image_item(rec: ImageRecord) -> dict[str, Any]:
    d = rec.describe()
    d["Hypervisor"] = "xen"
    d.setdefault("PlatformDetails", "Linux/UNIX")
    d.setdefault("UsageOperation", "RunInstances")
    d.setdefault("ImageOwnerAlias", None)
    return d


@action("DescribeImages", "InvalidAMIID.NotFound")
def describe_images(p: Params, ctx: Context) -> Result:
    ids = [check_image_id(i) for i in p.get("ImageIds") or []]
    flt = lifecycle.ImageFilter(
        owners=list(p.get("Owners") or []),
        executable_by=list(p.get("ExecutableUsers") or []),
        image_ids=ids,
    )
    filters = filters_of(p)
    records = [r for r in lifecycle.describe_images(None, flt) if visible(r, ctx.account_id)]
    if ids:
        missing = sorted(set(ids) - {r.image_id for r in records})
        if missing and not p.get("Owners") and not p.get("ExecutableUsers") and not filters:
            raise ApiError(
                "InvalidAMIID.NotFound", f"The image ids '[{', '.join(missing)}]' do not exist"
            )
    items = [image_item(r) for r in records]
    return {"Images": [i for i in items if match_filters(i, filters, _FILTERS)]}


@action("DeregisterImage", "InvalidAMIID.NotFound")
def deregister_image(p: Params, ctx: Context) -> Result:
    rec = find_owned(require(p, "ImageId"), ctx)
    lifecycle.deregister(rec.image_id)
    return {"Return": True}


@action("CopyImage", "InvalidParameterValue")
def copy_image(p: Params, ctx: Context) -> Result:
    src = find_visible(require(p, "SourceImageId"), ctx)
    name = require(p, "Name")
    if src.image_type != "machine":
        raise ApiError("InvalidAMIID.Unavailable", f"{src.image_id} is not a machine image")
    if p.get("Encrypted"):
        raise ApiError("UnsupportedOperation", "encrypted copies are not made here")
    rec = lifecycle.copy_image(
        src.image_id, name, description=p.get("Description"),
        copy_tags=bool(p.get("CopyImageTags")) and owner_of(src) == ctx.account_id,
        wait=False,
    )  # fmt: skip
    after_reply(f"copy-{rec.image_id}", ctx.account_id, lambda: lifecycle.finish_copy(rec.image_id))
    return {"ImageId": rec.image_id}


@action("CreateImage", "InvalidInstanceID.NotFound")
def create_image(p: Params, ctx: Context) -> Result:
    rec = find_instance(require(p, "InstanceId"), ctx)
    name = require(p, "Name")
    _check_name(name)
    tags = tag_specs(p, "image")  # refused before the AMI is registered
    try:
        creation = instance_images.begin_create_image(
            rec["InstanceId"], name, no_reboot=bool(p.get("NoReboot")),
            description=p.get("Description") or "",
        )  # fmt: skip
    except AmilabError as e:
        err = from_library(e)
        if "already in use" in str(e):
            err = ApiError("InvalidAMIName.Duplicate", str(e))
        raise err from None
    image_id = creation.image.image_id
    if tags:
        try:
            lifecycle.tag([image_id], tags)
        except BaseException as e:  # not left pending for the server's lifetime
            pending.image_failed(image_id, str(e))
            raise
    after_reply(f"create-image-{image_id}", ctx.account_id, creation.finish)
    return {"ImageId": image_id}


def _check_name(name: str) -> None:
    # EC2: 3-128 characters: letters, numbers, ( ) [ ] space . / - ' @ _
    if not re.fullmatch(r"[A-Za-z0-9()\[\] ./\-'@_]{3,128}", name):
        raise ApiError("InvalidAMIName.Malformed", f"AMI name '{name}' is invalid")


@action("RegisterImage", "InvalidParameterValue")
def register_image(p: Params, ctx: Context) -> Result:
    name = require(p, "Name")
    _check_name(name)
    location = p.get("ImageLocation")
    if not location:
        return _register_ebs(p, ctx, name)
    for ref in (p.get("KernelId"), p.get("RamdiskId")):
        if ref:
            find_visible(ref, ctx)
    path = Path(location)
    if not path.is_file():
        raise ApiError("InvalidManifest", f"ImageLocation {location}: no such manifest")
    rec = lifecycle.register_manifest(
        path, name=name, description=p.get("Description") or "",
        virtualization=p.get("VirtualizationType"),
    )  # fmt: skip
    for want, got, what in ((p.get("KernelId"), rec.kernel_id, "KernelId"),
                            (p.get("RamdiskId"), rec.ramdisk_id, "RamdiskId")):  # fmt: skip
        if want and want != got:  # the manifest names its own: refuse rather than mislead
            lifecycle.deregister(rec.image_id, force=True)
            raise ApiError("InvalidParameterValue", f"{what} {want}: the manifest names {got}")
    return {"ImageId": rec.image_id}


def _register_ebs(p: Params, ctx: Context, name: str) -> Result:
    """An EBS-backed AMI from a snapshot the caller may use (its root device's mapping)."""
    mappings = list(p.get("BlockDeviceMappings") or [])
    if not mappings:
        raise ApiError(
            "MissingParameter", "The request must contain ImageLocation or BlockDeviceMapping"
        )
    root = p.get("RootDeviceName") or mappings[0].get("DeviceName")
    if not root or not str(root).startswith("/dev/"):
        raise ApiError("InvalidParameterValue", f"Invalid value '{root}' for RootDeviceName")
    for m in mappings:
        if not str(m.get("DeviceName", "")).startswith("/dev/"):
            raise ApiError("InvalidBlockDeviceMapping", f"device name {m.get('DeviceName')!r}")
        if (m.get("Ebs") or {}).get("SnapshotId"):
            find_snapshot(m["Ebs"]["SnapshotId"], ctx)
    virt = p.get("VirtualizationType") or ("paravirtual" if p.get("KernelId") else "hvm")
    if virt not in ("paravirtual", "hvm"):
        raise ApiError("InvalidParameterValue", f"Invalid value '{virt}' for VirtualizationType")
    arch = p.get("Architecture") or "x86_64"
    if arch not in ("i386", "x86_64", "arm64"):
        raise ApiError("InvalidParameterValue", f"Invalid value '{arch}' for Architecture")
    for ref, kind in ((p.get("KernelId"), "kernel"), (p.get("RamdiskId"), "ramdisk")):
        if ref and find_visible(ref, ctx).image_type != kind:
            raise ApiError("InvalidParameterValue", f"{ref} is not a {kind} image")
    rec = lifecycle.register_snapshot(
        name, root, mappings, virtualization=virt, architecture=arch,
        kernel_id=p.get("KernelId"), ramdisk_id=p.get("RamdiskId"),
        description=p.get("Description") or "",
    )  # fmt: skip
    return {"ImageId": rec.image_id}


# ---------------------------------------------------------------- attributes


@action("DescribeImageAttribute", "InvalidAMIID.NotFound")
def describe_image_attribute(p: Params, ctx: Context) -> Result:
    rec = find_visible(require(p, "ImageId"), ctx)
    attribute = require(p, "Attribute")
    out: Result = {"ImageId": rec.image_id}
    if attribute == "launchPermission":
        if owner_of(rec) != ctx.account_id:
            raise ApiError("AuthFailure", f"Not authorized for image:{rec.image_id}")
        out["LaunchPermissions"] = rec.describe()["LaunchPermissions"]
    elif attribute == "description":
        out["Description"] = {"Value": rec.description}
    elif attribute == "kernel":
        out["KernelId"] = {"Value": rec.kernel_id}
    elif attribute == "ramdisk":
        out["RamdiskId"] = {"Value": rec.ramdisk_id}
    elif attribute == "blockDeviceMapping":
        out["BlockDeviceMappings"] = rec.block_device_mappings
    elif attribute == "bootMode":
        out["BootMode"] = {"Value": "uefi" if rec.launch.boot == "uefi" else "legacy-bios"}
    else:
        raise ApiError("InvalidRequest", f"The attribute {attribute} is not supported here")
    return out


@action("ModifyImageAttribute", "InvalidAMIID.NotFound")
def modify_image_attribute(p: Params, ctx: Context) -> Result:
    rec = find_owned(require(p, "ImageId"), ctx)
    attribute = p.get("Attribute")
    if p.get("Description") or attribute == "description":
        value = (p.get("Description") or {}).get("Value", p.get("Value"))
        if value is None:
            raise ApiError("MissingParameter", "The request must contain the parameter Value")

        def change(r: ImageRecord) -> None:
            r.description = str(value)

        Registry().update(rec.image_id, change)
        return {}
    lp = p.get("LaunchPermission") or {}
    add = [x for x in lp.get("Add") or []]
    remove = [x for x in lp.get("Remove") or []]
    op = p.get("OperationType")
    if p.get("UserIds") or p.get("UserGroups"):
        items = [{"UserId": u} for u in p.get("UserIds") or []]
        items += [{"Group": g} for g in p.get("UserGroups") or []]
        if op not in ("add", "remove"):
            raise ApiError("InvalidParameterValue", "OperationType must be add or remove")
        (add if op == "add" else remove).extend(items)
    if not add and not remove:
        raise ApiError("MissingParameter", "The request must contain LaunchPermission")
    public: bool | None = None
    for item in add + remove:
        if item.get("Group") not in (None, "all"):
            raise ApiError("InvalidParameterValue", f"Invalid group '{item.get('Group')}'")
        if item.get("Group") == "all":
            public = item in add
        if item.get("OrganizationArn") or item.get("OrganizationalUnitArn"):
            raise ApiError("UnsupportedOperation", "organizations are not kept here")
    try:
        lifecycle.set_launch_permission(
            rec.image_id, public=public,
            add=[i["UserId"] for i in add if i.get("UserId")],
            remove=[i["UserId"] for i in remove if i.get("UserId")],
        )  # fmt: skip
    except AmilabError as e:
        raise ApiError("InvalidAMIAttributeItemValue", str(e)) from None
    return {}


@action("ResetImageAttribute", "InvalidAMIID.NotFound")
def reset_image_attribute(p: Params, ctx: Context) -> Result:
    rec = find_owned(require(p, "ImageId"), ctx)
    if require(p, "Attribute") != "launchPermission":
        raise ApiError("InvalidParameterValue", "only launchPermission can be reset")
    lifecycle.set_launch_permission(rec.image_id, reset=True)
    return {"Return": True}


# ------------------------------------------------------------ store / restore

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bucket_target(name: Any, ctx: Context) -> tuple[str, str | None]:
    """EC2's bucket name as the store's target: an S3 bucket at the server's --s3-endpoint,
    else a directory of that name under $AMILAB_HOME/api/buckets."""
    if not isinstance(name, str) or not _BUCKET.fullmatch(name):
        raise ApiError("InvalidParameterValue", f"Invalid value '{name}' for Bucket")
    endpoint = ctx.server.settings.get("s3_endpoint")
    if endpoint:
        return f"s3://{name}", endpoint
    root = paths.amilab_home() / "api" / "buckets" / name
    root.mkdir(parents=True, exist_ok=True)
    return str(root), None


def _bucket_name(url: str) -> str:
    return url.removeprefix("s3://").split("/")[0] if url.startswith("s3://") else Path(url).name


@action("CreateStoreImageTask", "InvalidAMIID.NotFound")
def create_store_image_task(p: Params, ctx: Context) -> Result:
    rec = find_owned(require(p, "ImageId"), ctx)
    if rec.image_type != "machine":
        raise ApiError("InvalidAMIID.Unavailable", f"{rec.image_id} is not a machine image")
    spec, endpoint = bucket_target(require(p, "Bucket"), ctx)
    key = targets.parse_bucket(spec, endpoint).key(rec.image_id)
    from builder.images.shapes import acting_as

    account = ctx.account_id

    recorded = threading.Event()

    def run() -> None:  # the task's progress and outcome are in the task log
        try:
            with acting_as(account), contextlib.suppress(Exception):  # recorded Failed there
                store.store_image(rec.image_id, spec, endpoint_url=endpoint,
                                  recorded=recorded.set)  # fmt: skip
        finally:
            recorded.set()

    threading.Thread(target=run, name=f"store-{rec.image_id}", daemon=True).start()
    # answered once the task is in the log: a DescribeStoreImageTasks right after this
    # reply found nothing when the thread had not reached that point yet (seen in CI)
    recorded.wait(timeout=60)
    return {"ObjectKey": key}


@action("DescribeStoreImageTasks", "InvalidAMIID.NotFound")
def describe_store_image_tasks(p: Params, ctx: Context) -> Result:
    ids = [check_image_id(i) for i in p.get("ImageIds") or []]
    mine = {r.image_id for r in Registry().list("machine") if owner_of(r) == ctx.account_id}
    tasks = [t for t in store_tasks.TaskLog().recent() if t.image_id in mine or t.image_id in ids]
    if ids:
        tasks = [t for t in tasks if t.image_id in ids]
    latest: dict[str, Any] = {}
    for t in tasks:  # EC2 shows each image's latest task
        latest[t.image_id] = t
    out = []
    for t in latest.values():
        d = t.describe()
        d["Bucket"] = _bucket_name(t.bucket)
        d.pop("ObjectKey", None)
        out.append({k: v for k, v in d.items() if v is not None})
    filters = filters_of(p)
    fields = {"task-state": field("StoreTaskState"), "bucket": field("Bucket")}
    return {"StoreImageTaskResults": [d for d in out if match_filters(d, filters, fields)]}


@action("CreateRestoreImageTask", "InvalidParameterValue")
def create_restore_image_task(p: Params, ctx: Context) -> Result:
    spec, endpoint = bucket_target(require(p, "Bucket"), ctx)
    key = require(p, "ObjectKey")
    if "/" in key.replace("\\", "/").lstrip("/") and ".." in key.split("/"):
        raise ApiError("InvalidParameterValue", f"Invalid value '{key}' for ObjectKey")
    name = p.get("Name")
    if name:
        _check_name(name)
    try:
        result = store.restore_image(spec, key, name=name, endpoint_url=endpoint)
    except AmilabError as e:
        err = from_library(e)
        if "already in use" in str(e):
            err = ApiError("InvalidAMIName.Duplicate", str(e))
        raise err from None
    return {"ImageId": result.image.image_id}
