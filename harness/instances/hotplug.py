"""Volumes attached to or detached from a running instance: what a command asks for, what
the supervisor records when it has done it, and what a QEMU's end means for a request still
open. Plain changes of an instance record (inside `JsonTable.update` callbacks); the QMP side
is harness.instances.devices.

A command records, under the instance's lock, the mapping's `Ebs.Status` as describe-instances
shows it (`attaching`, `detaching`) and a request `Amilab.Hotplug[VOLUME]` (`Op` attach or
detach, `Force`), then signals the supervisor (SIGUSR2) and waits. The supervisor plugs or
unplugs the device and records the outcome: the mapping `attached`, or the mapping gone (the
volume is then made available); or an `Error` on the request, which the command reports and
clears. A guest that does not let go of a device leaves the volume `detaching` (EC2's "stuck
detaching") until it does, the instance stops, or a forced detach ends it.
"""

from __future__ import annotations

from typing import Any

from builder.images.tables import Row

ATTACH = "attach"
DETACH = "detach"


def requests(rec: Row) -> dict[str, dict[str, Any]]:
    """The open requests by volume ID (the record's own dict: change it in place)."""
    return rec["Amilab"].setdefault("Hotplug", {})


def mapping(rec: Row, volume_id: str) -> dict[str, Any] | None:
    for m in rec["BlockDeviceMappings"]:
        if m.get("Ebs", {}).get("VolumeId") == volume_id:
            return m
    return None


def want_attach(rec: Row, volume_id: str, device: str, now: str) -> None:
    rec["BlockDeviceMappings"].append({"DeviceName": device, "Ebs": {
        "VolumeId": volume_id, "Status": "attaching", "AttachTime": now,
        "DeleteOnTermination": False}})  # fmt: skip
    requests(rec)[volume_id] = {"Op": ATTACH, "Device": device}


def want_detach(rec: Row, volume_id: str, force: bool) -> None:
    m = mapping(rec, volume_id)
    assert m is not None, volume_id
    m["Ebs"]["Status"] = "detaching"
    requests(rec)[volume_id] = {"Op": DETACH, "Force": force}


def attached(rec: Row, volume_id: str) -> None:
    """The guest has the device."""
    m = mapping(rec, volume_id)
    if m is not None:
        m["Ebs"]["Status"] = "attached"
    requests(rec).pop(volume_id, None)


def detached(rec: Row, volume_id: str) -> None:
    """The device is gone from the guest."""
    rec["BlockDeviceMappings"] = [
        m for m in rec["BlockDeviceMappings"] if m.get("Ebs", {}).get("VolumeId") != volume_id
    ]
    requests(rec).pop(volume_id, None)


def failed(rec: Row, volume_id: str, message: str) -> None:
    """A request that could not be carried out: an attach is undone (the volume is made
    available by the caller); a detach stays open, the mapping `detaching`."""
    req = requests(rec).get(volume_id)
    if req is None:
        return
    if req["Op"] == ATTACH:
        rec["BlockDeviceMappings"] = [
            m for m in rec["BlockDeviceMappings"]
            if m.get("Ebs", {}).get("VolumeId") != volume_id
        ]  # fmt: skip
    req["Error"] = message


def open_requests(rec: Row) -> dict[str, dict[str, Any]]:
    """What the supervisor has still to do (failed requests wait for their command)."""
    return {v: r for v, r in requests(rec).items() if not r.get("Error")}


def take_error(rec: Row, volume_id: str) -> str | None:
    """A failed request's message, and the request forgotten if it was an attach (its
    mapping is already gone); a failed detach stays open, so that a stop ends it."""
    req = requests(rec).get(volume_id)
    if req is None or not req.get("Error"):
        return None
    message = str(req.pop("Error"))
    if req["Op"] == ATTACH:
        requests(rec).pop(volume_id)
    return message


def settle(rec: Row) -> list[tuple[str, str]]:
    """The instance's QEMU has ended (a stop, a reboot's restart, a dead supervisor): an
    attach still open is an attachment its next QEMU starts with, a detach is done, since no
    guest holds the device any more. Returns (volume ID, "attached" | "detached") for the
    volume records."""
    out: list[tuple[str, str]] = []
    for volume_id, req in list(requests(rec).items()):
        if req["Op"] == ATTACH:
            if mapping(rec, volume_id) is not None:  # not a failed one
                attached(rec, volume_id)
                out.append((volume_id, "attached"))
            requests(rec).pop(volume_id, None)
        else:
            detached(rec, volume_id)
            out.append((volume_id, "detached"))
    if not requests(rec):
        rec["Amilab"].pop("Hotplug", None)
    return out


def settle_volumes(instance_id: str, changes: list[tuple[str, str]]) -> None:
    """The volume records after `settle`."""
    import contextlib

    from builder.errors import BadInput
    from builder.images import volumes

    for volume_id, outcome in changes:
        with contextlib.suppress(BadInput):  # deleted meanwhile: nothing to record
            if outcome == "attached":
                volumes.attachment_state(volume_id, "attached")
            else:
                volumes.detach(volume_id, instance_id)
