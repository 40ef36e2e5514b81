"""The AWS JSON shapes of the image catalogue: describe-images, block device mappings, the
account an image belongs to."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from builder.errors import BadInput

if TYPE_CHECKING:
    from builder.images.records import ImageRecord


# The account a request acts as (the API server sets it per request thread from the access
# key that signed it); unset, everything acts as the local account.
_acting_as: ContextVar[str | None] = ContextVar("amilab_account", default=None)


def account_id() -> str:
    """The account the current call acts as: the API request's, else the local one."""
    return _acting_as.get() or local_account_id()


@contextmanager
def acting_as(account: str) -> Iterator[None]:
    """Run the calls inside as `account` (who owns what they register, who "self" is)."""
    token = _acting_as.set(account)
    try:
        yield
    finally:
        _acting_as.reset(token)


def owner_of(rec: ImageRecord) -> str:
    """Records registered before owners were kept belong to the local account."""
    return rec.owner_id or local_account_id()


def local_account_id() -> str:
    """This user's 12-digit account ID: AMILAB_ACCOUNT_ID, or one derived from the uid so it
    stays the same across sessions without configuration."""
    if configured := os.environ.get("AMILAB_ACCOUNT_ID"):
        if not (len(configured) == 12 and configured.isdigit()):
            raise BadInput(f"AMILAB_ACCOUNT_ID={configured!r}: expected 12 digits")
        return configured
    digest = hashlib.sha256(f"amilab-account:{os.getuid()}".encode()).hexdigest()
    return f"{int(digest, 16) % 10**12:012d}"


def describe_image(rec: ImageRecord) -> dict[str, Any]:
    """One image as `aws ec2 describe-images` prints it."""
    out: dict[str, Any] = {
        "ImageId": rec.image_id,
        "ImageType": rec.image_type,
        "Name": rec.name,
        "Architecture": rec.architecture,
        "KernelId": rec.kernel_id,
        "RamdiskId": rec.ramdisk_id,
        "VirtualizationType": rec.virtualization_type,
        "RootDeviceName": rec.root_device_name,
        "RootDeviceType": rec.root_device_type,
        "BlockDeviceMappings": rec.block_device_mappings,
        "State": rec.state,
        "ImageLocation": rec.image_location,
        "CreationDate": rec.creation_date,
        "Description": rec.description,
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(rec.tags.items())],
    }
    if rec.image_type == "kernel":
        out["KernelRelease"] = rec.kernel_release
        out["PackageVersion"] = rec.package_version
    if rec.locations:
        out["Locations"] = rec.locations
    if rec.extra.get("state_reason"):  # why a pending image ended failed (builder.state)
        out["StateReason"] = rec.extra["state_reason"]
    if rec.extra.get("build_inputs"):  # what went into a built AMI (builder.build.inputs)
        out["amilab:BuildInputs"] = rec.extra["build_inputs"]
    if rec.extra.get("out_of_tree_modules"):  # dkms and extra-modules (build.out_of_tree)
        out["amilab:OutOfTreeModules"] = [
            {k: m[k] for k in ("Name", "Version", "KernelRelease", "Source", "Origin", "Path")}
            for m in rec.extra["out_of_tree_modules"]
        ]
    out["OwnerId"] = owner_of(rec)
    out["Public"] = rec.public
    out["LaunchPermissions"] = [{"UserId": a} for a in rec.launch_permissions] + (
        [{"Group": "all"}] if rec.public else []
    )
    return out


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


def instance_store_mapping(device: str) -> list[dict[str, Any]]:
    """The root of an instance-store (bundled) image: the bundle's bytes, no snapshot."""
    return [{"DeviceName": device, "VirtualName": "ami"}]
