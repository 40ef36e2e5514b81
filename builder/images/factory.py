"""The one place image records are made: AKIs, ARIs and AMIs for a build, an import, a bundle
registration, PV-GRUB, and the new registrations of copy-image and restore.

IDs (DESIGN.md): an AKI's or ARI's derives from its bytes alone. An AMI's derives from its
disk's digest and its registration (RegisterImage's parameters), so a rebuild of the same
recipe gets the same ID; registrations that EC2 gives a new ID every time (register-image of
a bundle, copy-image, restore) add the time and a random nonce.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from typing import Any

from builder.ids import make_id, registration_id
from builder.images.records import (
    ImageRecord,
    KernelSettings,
    LaunchSettings,
    RamdiskSettings,
    now_iso,
)
from builder.images.shapes import account_id, instance_store_mapping, root_ebs_mapping

_CONTENT_PREFIX = {"kernel": "aki", "ramdisk": "ari"}


@dataclass(frozen=True)
class Registration:
    """RegisterImage's parameters of a machine image (what EC2 shows as its own fields)."""

    name: str
    virtualization: str | None
    root_device_name: str | None
    architecture: str = "x86_64"
    kernel_id: str | None = None
    ramdisk_id: str | None = None

    @classmethod
    def of(cls, rec: ImageRecord) -> Registration:
        return cls(
            rec.name,
            rec.virtualization_type,
            rec.root_device_name,
            rec.architecture,
            rec.kernel_id,
            rec.ramdisk_id,
        )

    def identity(self) -> dict[str, Any]:
        """With the disk's digest, what the AMI's ID derives from. (Changing these keys or
        values changes the ID of every image built or imported again.)"""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "virtualization": self.virtualization,
            "kernel_id": self.kernel_id,
            "ramdisk_id": self.ramdisk_id,
            "root_device_name": self.root_device_name,
        }


def machine_id(digest: str, registered: dict[str, Any], *, fresh: bool = False) -> str:
    """An AMI's ID; `fresh` for a registration that is new every time it happens."""
    if fresh:
        registered = {**registered, "registered": now_iso(), "nonce": secrets.token_hex(8)}
    return registration_id("ami", digest, registered)


def new_image_id(image_type: str, digest: str, registered: dict[str, Any]) -> str:
    """A new registration of the same bytes (register, copy-image, restore): an AMI gets a
    fresh ID; an AKI or ARI keeps the one its bytes give."""
    if image_type != "machine":
        return make_id(_CONTENT_PREFIX[image_type], digest)
    return machine_id(digest, registered, fresh=True)


# ------------------------------------------------------------------ AKI and ARI


def content_image(
    digest: str,
    name: str,
    location: str,
    settings: KernelSettings | RamdiskSettings,
    *,
    release: str | None = None,
    version: str | None = None,
    description: str = "",
    architecture: str = "x86_64",
    locations: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ImageRecord:
    """An AKI (KernelSettings) or ARI (RamdiskSettings) whose file's sha256 is `digest`.
    `location` is that file (or, registered from a bundle, the manifest); `release` is the
    kernel's release, or for a ramdisk the release whose modules it carries."""
    image_type = "kernel" if isinstance(settings, KernelSettings) else "ramdisk"
    rec = ImageRecord(
        make_id(_CONTENT_PREFIX[image_type], digest), image_type, name, architecture, description
    )
    rec.image_location, rec.digest = location, digest
    rec.kernel_release, rec.package_version = release, version
    rec.locations, rec.extra = dict(locations or {}), dict(extra or {})
    if isinstance(settings, KernelSettings):
        rec.kernel_settings = settings
    else:
        rec.ramdisk_settings = settings
    return rec


# ------------------------------------------------------------------------- AMI


def machine_image(
    reg: Registration,
    digest: str,
    launch: LaunchSettings,
    locations: dict[str, str],
    *,
    description: str = "",
    image_location: str | None = None,
    instance_store: bool = False,
    extra: dict[str, Any] | None = None,
    id_extra: dict[str, Any] | None = None,
    fresh: bool = False,
) -> ImageRecord:
    """An AMI of a disk whose digest is `digest`, stored at `locations` (format → path).

    Its ID comes from the digest and its registration plus `id_extra` (what else makes this
    registration distinct, e.g. an import's); `fresh` for one that is new every time. Its
    root is an EBS snapshot of the disk, or `instance_store`: the bundle's bytes.
    `image_location` defaults to the first stored format."""
    image_id = machine_id(digest, {**reg.identity(), **(id_extra or {})}, fresh=fresh)
    rec = ImageRecord(image_id, "machine", reg.name, reg.architecture, description)
    rec.kernel_id, rec.ramdisk_id = reg.kernel_id, reg.ramdisk_id
    rec.virtualization_type, rec.root_device_name = reg.virtualization, reg.root_device_name
    root = reg.root_device_name or ""
    rec.root_device_type = "instance-store" if instance_store else "ebs"
    rec.block_device_mappings = (
        instance_store_mapping(root)
        if instance_store
        else root_ebs_mapping(root, digest, launch.disk_size or 0)
    )
    rec.image_location = image_location or next(iter(locations.values()))
    rec.digest, rec.locations, rec.launch = digest, dict(locations), launch
    rec.extra = dict(extra or {})
    return rec


def reregistered(
    src: ImageRecord,
    name: str,
    id_extra: dict[str, Any],
    *,
    digest: str | None = None,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    locations: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ImageRecord:
    """The same machine image registered again under a new ID and name (copy-image,
    restore): its disk and launch settings as they were, owned by this account, private.
    `digest` is the disk's when the source has none recorded; `tags` None keeps the
    source's; `locations` None keeps its disk where it is."""
    rec = copy.deepcopy(src)
    rec.name = name
    disk_digest = digest or src.digest or ""
    rec.image_id = new_image_id("machine", disk_digest, {**Registration.of(rec).identity(),
                                                         **id_extra})  # fmt: skip
    rec.description = src.description if description is None else description
    rec.creation_date = ""
    rec.owner_id = account_id()
    rec.public, rec.launch_permissions = False, []
    if tags is not None:
        rec.tags = dict(tags)
    if locations is not None:
        rec.locations = dict(locations)
        rec.image_location = next(iter(locations.values()))
    rec.extra = {**src.extra, **(extra or {})}
    return rec


def stored_at(rec: ImageRecord, location: str) -> ImageRecord:
    """A carried AKI or ARI (restore) as this registry keeps it: same ID, its file here."""
    out = copy.deepcopy(rec)
    out.image_location = location
    out.owner_id = rec.owner_id or account_id()
    return out
