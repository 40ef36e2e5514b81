"""The caller's resources by ID: one lookup per kind with its ownership check, which every
action uses, so that an ID is refused alike whichever action names it. As on EC2, another
account's resource is NotFound unless it is shared with the caller (images, snapshots);
changing a shared one is an AuthFailure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builder.images import volumes
from builder.images.records import ImageRecord
from builder.images.registry import Registry
from builder.images.shapes import local_account_id, owner_of
from builder.images.tables import Row
from harness.api.actions.common import Context, check_id, is_ec2_id
from harness.api.errors import ApiError
from harness.instances import store
from harness.instances.operations.common import owner_of_instance

IMAGE_PREFIXES = ("ami", "aki", "ari")


def _callers(row: Row | None, owner: Callable[[Row], str], ctx: Context, code: str,
             message: str) -> Row:  # fmt: skip
    """The row if the caller owns it; else EC2's NotFound, which does not tell another
    account's resource from a missing one."""
    if row is None or owner(row) != ctx.account_id:
        raise ApiError(code, message)
    return row


# ------------------------------------------------------------------- images


def check_image_id(value: Any) -> str:
    if not isinstance(value, str) or not any(is_ec2_id(value, p) for p in IMAGE_PREFIXES):
        raise ApiError("InvalidAMIID.Malformed", f'Invalid id: "{value}" (expecting "ami-...")')
    return value


def visible(rec: ImageRecord, account: str) -> bool:
    """What EC2 lets an account see and launch: its own, public, or shared with it."""
    return owner_of(rec) == account or rec.public or account in rec.launch_permissions


def not_found(image_id: str) -> ApiError:
    return ApiError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")


def find_visible(image_id: Any, ctx: Context) -> ImageRecord:
    rec = Registry().get(check_image_id(image_id))
    if rec is None or not visible(rec, ctx.account_id):
        raise not_found(str(image_id))
    return rec


def find_owned(image_id: Any, ctx: Context) -> ImageRecord:
    rec = find_visible(image_id, ctx)
    if owner_of(rec) != ctx.account_id:
        raise ApiError(
            "AuthFailure", f"Not authorized for image:{rec.image_id} (owned by another account)"
        )
    return rec


# ---------------------------------------------------------------- instances


def find_instance(instance_id: Any, ctx: Context) -> Row:
    iid = check_id(instance_id, "i", "InvalidInstanceID.Malformed")
    message = f"The instance ID '{iid}' does not exist"
    return _callers(store.instances().get(iid), owner_of_instance, ctx,
                    "InvalidInstanceID.NotFound", message)  # fmt: skip


# ------------------------------------------------------- volumes, snapshots


def volume_owner(v: Row) -> str:
    for a in v.get("Attachments") or []:  # the instance's owner; unattached: who made it
        rec = store.instances().get(a["InstanceId"])
        if rec is not None:
            return owner_of_instance(rec)
    return str((v.get("Amilab") or {}).get("OwnerId") or local_account_id())


def find_volume(volume_id: Any, ctx: Context) -> Row:
    vid = check_id(volume_id, "vol", "InvalidVolume.Malformed")
    message = f"The volume '{vid}' does not exist."
    return _callers(volumes.volumes().get(vid), volume_owner, ctx,
                    "InvalidVolume.NotFound", message)  # fmt: skip


def snapshot_visible(s: Row, account: str) -> bool:
    owner = s.get("OwnerId") or local_account_id()
    shared = (s.get("Amilab") or {}).get("CreateVolumePermissions") or []
    return owner == account or account in shared or "all" in shared


def find_snapshot(snapshot_id: Any, ctx: Context, owned: bool = False) -> Row:
    sid = check_id(snapshot_id, "snap", "InvalidSnapshot.Malformed")
    try:
        s = volumes.find_snapshot(sid)
    except Exception:  # noqa: BLE001 - EC2's answer whatever the lookup said
        s = None
    if s is None or not snapshot_visible(s, ctx.account_id):
        raise ApiError("InvalidSnapshot.NotFound", f"The snapshot '{sid}' does not exist.")
    if owned and (s.get("OwnerId") or local_account_id()) != ctx.account_id:
        raise ApiError("AuthFailure", f"Not authorized for snapshot:{sid}")
    return s
