"""What makes an image of an instance: CreateImage (snapshots of its volumes) and
bundle-vol (its root filesystem as an instance-store bundle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import BadInput
from builder.images import factory, volumes
from builder.images.records import ImageRecord
from builder.images.registry import Registry
from builder.images.tables import Row
from builder.state import pending
from builder.state.diskfull import require_space
from harness.instances import launch_images, store
from harness.instances.operations.common import (
    reconcile,
)
from harness.instances.operations.launch import start_instances
from harness.instances.operations.stop import stop_instances


@dataclass
class ImageCreation:
    """A CreateImage whose AMI is registered pending: `finish` snapshots the instance's
    volumes and makes it available, or failed with a reason (the CLI waits for it, the
    API server runs it after its reply, as EC2 answers CreateImage at once)."""

    image: ImageRecord
    instance: Row
    source: ImageRecord
    registration: factory.Registration
    no_reboot: bool

    def finish(self) -> ImageRecord:
        try:
            return _snapshot_into(self)
        except BaseException as e:
            pending.image_failed(self.image.image_id, str(e), "Client.InternalError")
            raise


def create_image(
    instance_id: str, name: str, no_reboot: bool = False, description: str = ""
) -> ImageRecord:
    """CreateImage, waited for: see `begin_create_image`."""
    return begin_create_image(instance_id, name, no_reboot, description).finish()


def begin_create_image(
    instance_id: str, name: str, no_reboot: bool = False, description: str = ""
) -> ImageCreation:
    """CreateImage's checks and its pending AMI. Unless `no_reboot`, `finish` stops a
    running instance first so its disks are consistent, and starts it again afterwards, as
    EC2 does. Every EBS volume is snapshotted; the new AMI refers to those snapshots, with
    the instance's kernel and ramdisk for a paravirtual image."""
    from builder.images.registry import check_name_free

    registry = Registry()
    check_name_free(registry, name)
    rec = reconcile(store.find(instance_id))
    state = rec["State"]["Name"]
    if state not in ("running", "stopped"):
        raise BadInput(f"IncorrectInstanceState: The instance '{instance_id}' is {state}")
    source = launch_images.registry_for(rec).find(rec["ImageId"], "machine")
    # refused before the instance is stopped: a full disk must not cost it a reboot
    need = sum(
        volumes.snapshot_estimate(
            volumes.volumes().find(m["Ebs"]["VolumeId"], "InvalidVolume.NotFound")
        )
        for m in rec["BlockDeviceMappings"]
    )
    require_space(paths.work_root(), need, f"the snapshots of {instance_id}")
    reg = factory.Registration(
        name, source.virtualization_type, source.root_device_name, source.architecture,
        rec.get("KernelId") if source.virtualization_type == "paravirtual" else None,
        rec.get("RamdiskId") if source.virtualization_type == "paravirtual" else None,
    )  # fmt: skip
    image = _pending_image(registry, reg, source, instance_id, description)
    return ImageCreation(image, rec, source, reg, no_reboot)


def _pending_image(
    registry: Registry, reg: Any, source: ImageRecord, instance_id: str, description: str
) -> ImageRecord:
    """The new AMI, registered `pending` (owned by this process) before any snapshot is
    made, as EC2 shows CreateImage's AMI pending at once: killed half-way it is found and
    failed (builder/state/pending.py), never left half-made."""
    image = factory.machine_image(
        reg, source.digest or "", source.launch, {"raw": ""},
        description=description or f"created from {instance_id}",
        extra={"created_from": instance_id, "source_image_id": source.image_id},
        id_extra={"instance": instance_id}, fresh=True,
    )  # fmt: skip
    image.locations, image.image_location, image.block_device_mappings = {}, "", []
    return registry.register_new(pending.hold(image))


def _snapshot_into(c: ImageCreation) -> ImageRecord:
    """Every EBS volume of the instance snapshotted, then the pending AMI made available
    naming them."""
    rec, instance_id, name = c.instance, c.instance["InstanceId"], c.image.name
    restart = rec["State"]["Name"] == "running" and not c.no_reboot
    if restart:
        stop_instances([instance_id], wait=True, timeout=180)
    try:
        snaps: list[tuple[dict[str, Any], Row]] = []
        for m in rec["BlockDeviceMappings"]:
            snap = volumes.create_snapshot(
                m["Ebs"]["VolumeId"], f"Created by CreateImage({instance_id}) for {name}"
            )
            snaps.append((m, snap))
    finally:
        if restart:
            start_instances([instance_id])
    root_snap = next(s for m, s in snaps if m["DeviceName"] == rec["RootDeviceName"])
    made = factory.machine_image(
        c.registration, root_snap["Amilab"]["Digest"], c.source.launch,
        {"raw": root_snap["Amilab"]["Path"]},
    )  # fmt: skip
    mappings = [
        {"DeviceName": m["DeviceName"], "Ebs": {
            "SnapshotId": s["SnapshotId"], "VolumeSize": s["VolumeSize"],
            "VolumeType": "standard", "DeleteOnTermination": m["Ebs"]["DeleteOnTermination"],
            "Encrypted": False}}
        for m, s in snaps
    ]  # fmt: skip

    def available(r: ImageRecord) -> None:
        r.digest, r.locations, r.image_location = made.digest, made.locations, made.image_location
        r.block_device_mappings = mappings

    return pending.image_done(c.image.image_id, available)


# ------------------------------------------------------------------ bundle-vol


def bundle_vol(
    instance_id: str,
    cert: Path,
    private_key: Path,
    dest: Path,
    *,
    prefix: str = "image",
    excludes: list[str] | None = None,
    no_filter: bool = False,
    no_reboot: bool = False,
    kernel: str | None = None,
    ramdisk: str | None = None,
    user: str | None = None,
    ec2_cert: Path | None = None,
) -> tuple[Any, list[str]]:
    """ec2-bundle-vol for an instance, from the host: its root volume's filesystem, less
    what is excluded, as an instance-store bundle whose manifest names the instance's kernel
    and ramdisk (as ec2-bundle-vol read them from the metadata). Like create-image, a running
    instance is stopped first and started again afterwards unless `no_reboot`; the volume is
    only ever read."""
    from builder.images import bundle_keys
    from builder.images.bundle_volume import Selection, bundle_volume
    from builder.images.shapes import account_id

    sel = Selection(list(excludes or []), no_filter)  # bad paths refused before any stop
    rec = reconcile(store.find(instance_id))
    state = rec["State"]["Name"]
    if state not in ("running", "stopped"):
        raise BadInput(f"IncorrectInstanceState: The instance '{instance_id}' is {state}")
    image = launch_images.registry_for(rec).find(rec["ImageId"], "machine")
    root = next((m for m in rec["BlockDeviceMappings"]
                 if m["DeviceName"] == rec["RootDeviceName"]), None)  # fmt: skip
    if root is None:
        raise BadInput(f"{instance_id} has no root volume")
    vol = volumes.volumes().find(root["Ebs"]["VolumeId"], "InvalidVolume.NotFound")
    registry = Registry()
    for ref in (kernel, ramdisk):
        if ref and ref != "none":
            registry.find(ref)
    account = user or account_id()
    restart = state == "running" and not no_reboot
    if restart:
        stop_instances([instance_id], wait=True, timeout=180)
    try:
        result, removed = bundle_volume(
            volumes.volume_path(vol), "qcow2", image.launch.fs_offset or 0, dest, prefix, sel,
            user=account, architecture=rec["Architecture"], user_cert=cert,
            private_key=private_key, ec2_cert=ec2_cert or bundle_keys.ec2_key_pair()[0],
            kernel_id=None if kernel == "none" else kernel or rec.get("KernelId"),
            ramdisk_id=None if ramdisk == "none" else ramdisk or rec.get("RamdiskId"),
            root_device=rec["RootDeviceName"],
        )  # fmt: skip
    finally:
        if restart:
            start_instances([instance_id])
    bundle_keys.remember_signing_cert(account, cert)  # as `bundle` does, for `register`
    return result, removed
