"""AttachVolume and DetachVolume on an instance: at once while it is stopped, through its
supervisor (hot-plug, see harness.instances.hotplug) while it runs."""

from __future__ import annotations

import signal
import time
from typing import Any

from builder.errors import BadInput
from builder.images import volumes
from builder.images.records import now_iso
from builder.images.tables import Row
from harness.instances import hotplug, store
from harness.instances.operations.common import (
    reconcile,
    reconcile_locked,
    signal_supervisor,
    supervisor_alive,
)

ATTACH_WAIT = 60.0  # seconds a command waits for the supervisor to plug a device


def _device_free(rec: Row, device: str) -> None:
    taken = [m["DeviceName"] for m in rec["BlockDeviceMappings"]]
    taken += rec["Amilab"].get("InstanceStoreDevices") or []
    if device in taken or device == rec["RootDeviceName"]:
        raise BadInput(
            f"InvalidParameterValue: Invalid value '{device}' for unixDevice. "
            f"Attachment point {device} is already in use"
        )


def _refuse_hotplug(rec: Row, what: str) -> None:
    """What cannot change while the guest runs here: QEMU's arm64 `virt` board has no
    hot-plug slots in amilab's launch; IDE disks cannot be hot-plugged, and a SCSI disk's
    hot-plug is not done here."""
    bus = rec["Amilab"]["Launch"].get("DiskBus")
    if rec.get("Architecture") == "arm64" or bus in ("ide", "scsi"):
        why = "arm64 instances" if rec.get("Architecture") == "arm64" else f"{bus} disks"
        raise BadInput(
            f"UnsupportedOperation: {what} while {rec['InstanceId']} is running is not "
            f"supported here ({why} have no hot-plug); stop the instance first"
        )


def _await_hotplug(iid: str, volume_id: str, what: str, timeout: float) -> None:
    """Wait (holding the instance's lock) until the supervisor has carried out the request:
    done, or its error raised as one line (exit 2). A supervisor that dies meanwhile leaves
    the instance stopped, the request settled (`hotplug.settle`)."""
    deadline = time.monotonic() + timeout
    while True:
        rec = store.find(iid)
        req = (rec["Amilab"].get("Hotplug") or {}).get(volume_id)
        if req is None:
            return
        if req.get("Error"):
            message = _take_error(iid, volume_id)
            raise BadInput(message or f"IncorrectState: the {what} of {volume_id} failed")
        if not supervisor_alive(rec):
            reconcile_locked(iid)
            continue
        if time.monotonic() > deadline:
            raise BadInput(
                f"IncorrectState: {iid}'s supervisor has not carried out the {what} of "
                f"{volume_id} within {timeout:.0f} s; describe-volumes shows how it ends"
            )
        time.sleep(0.1)


def _take_error(iid: str, volume_id: str) -> str | None:
    taken: list[str | None] = []
    store.instances().update(iid, lambda r: taken.append(hotplug.take_error(r, volume_id)))
    return taken[0]


def attach_volume(
    volume_id: str, instance_id: str, device: str, timeout: float = ATTACH_WAIT
) -> dict[str, Any]:
    """AttachVolume, to a stopped instance (its next start has the disk) or a running one:
    the supervisor hot-plugs the device (`attaching` until the guest has it, then
    `attached`), which the instance keeps across stops and reboots."""
    if not device.startswith("/dev/"):
        raise BadInput(f"InvalidParameterValue: Invalid value '{device}' for unixDevice")
    reconcile(store.find(instance_id))
    with store.locked(instance_id):
        rec = store.find(instance_id)
        state = rec["State"]["Name"]
        if state not in ("stopped", "running"):
            raise BadInput(
                f"IncorrectInstanceState: The instance '{instance_id}' is not 'running' "
                f"or 'stopped' (it is {state})"
            )
        _device_free(rec, device)
        zone = rec["Placement"]["AvailabilityZone"]
        if state == "stopped":
            vol = volumes.attach(volume_id, instance_id, device, False, zone=zone)

            def change(r: Row) -> None:
                r["BlockDeviceMappings"].append({"DeviceName": device, "Ebs": {
                    "VolumeId": volume_id, "Status": "attached", "AttachTime": now_iso(),
                    "DeleteOnTermination": False}})  # fmt: skip

            store.instances().update(instance_id, change)
            return vol["Attachments"][0]
        _refuse_hotplug(rec, f"attaching {volume_id}")
        volumes.attach(volume_id, instance_id, device, False, "attaching", zone)
        rec = store.instances().update(
            instance_id, lambda r: hotplug.want_attach(r, volume_id, device, now_iso())
        )
        signal_supervisor(rec, signal.SIGUSR2)  # a dead one: settled as attached
        _await_hotplug(instance_id, volume_id, "attachment", timeout)
    vol = volumes.volumes().find(volume_id, "InvalidVolume.NotFound")
    if not vol["Attachments"] or vol["Attachments"][0]["InstanceId"] != instance_id:
        raise BadInput(f"IncorrectState: the attachment of {volume_id} to {instance_id} failed")
    return vol["Attachments"][0]


def detach_volume(
    volume_id: str,
    instance_id: str | None = None,
    force: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """DetachVolume. From a stopped instance at once; from a running one the guest is asked
    to let go of the device (`detaching` until it has, then `detached` and the volume
    available). A guest that does not let go within harness.instances.devices'
    DETACH_TIMEOUT leaves the volume `detaching` (exit 2 saying so); `force` ends the
    attachment anyway. The root volume is never detached."""
    from harness.instances.devices import DETACH_TIMEOUT, FORCE_GRACE

    vol = volumes.volumes().find(volume_id, "InvalidVolume.NotFound")
    if vol["State"] != "in-use":
        raise BadInput(f"IncorrectState: Volume '{volume_id}' is in the '{vol['State']}' state.")
    attachment = vol["Attachments"][0]
    iid = attachment["InstanceId"]
    if instance_id and instance_id != iid:
        raise BadInput(
            f"InvalidAttachment.NotFound: The volume '{volume_id}' is not attached to "
            f"instance '{instance_id}'"
        )
    reconcile(store.find(iid))
    with store.locked(iid):
        rec = store.find(iid)
        state = rec["State"]["Name"]
        if any(m["DeviceName"] == rec["RootDeviceName"] and m["Ebs"]["VolumeId"] == volume_id
               for m in rec["BlockDeviceMappings"]):  # fmt: skip
            raise BadInput(
                f"OperationNotPermitted: {volume_id} is the root volume of {iid}; "
                "it cannot be detached"
            )
        if state in ("stopped", "terminated"):
            volumes.detach(volume_id, instance_id)

            def change(r: Row) -> None:
                hotplug.detached(r, volume_id)
                if not hotplug.requests(r):
                    r["Amilab"].pop("Hotplug", None)

            store.instances().update(iid, change)
            return dict(attachment, State="detached")
        if state != "running":
            raise BadInput(
                f"IncorrectInstanceState: The instance '{iid}' is {state}; detach from a "
                "running or stopped instance"
            )
        m = hotplug.mapping(rec, volume_id)
        if m is not None and m["Ebs"].get("Status") == "attaching":
            raise BadInput(f"IncorrectState: Volume '{volume_id}' is still attaching")
        _refuse_hotplug(rec, f"detaching {volume_id}")
        volumes.attachment_state(volume_id, "detaching")
        rec = store.instances().update(iid, lambda r: hotplug.want_detach(r, volume_id, force))
        signal_supervisor(rec, signal.SIGUSR2)  # a dead one: settled as detached
        wait = timeout if timeout is not None else (FORCE_GRACE if force else DETACH_TIMEOUT)
        _await_hotplug(iid, volume_id, "detachment", wait + 30)
    return dict(attachment, State="detached")
