"""The supervisor's side of volumes attached to or detached from a running instance: carry
out the requests the record holds (on SIGUSR2) and record the detachments the guest, or a
forced detach, has ended since the last look. The record changes are harness.instances.hotplug;
the QMP side is harness.instances.devices. `say` is the supervisor's log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builder.images import volumes
from builder.images.tables import Row
from harness.instances import hotplug, store
from harness.instances.devices import FORCED, RELEASED, STUCK, DeviceError, Devices

Say = Callable[[str], None]


def volume_serial(volume_id: str) -> str:
    return volume_id.replace("-", "")  # as EC2's NVMe volumes name themselves


def _update(iid: str, change: Any) -> Row:
    return store.instances().update(iid, change, "InvalidInstanceID.NotFound")


def carry_out(iid: str, devices: Devices, say: Say) -> None:
    """Carry out the attachments and detachments the record asks for."""
    for vid, req in hotplug.open_requests(store.find(iid)).items():
        if req["Op"] == hotplug.ATTACH:
            if vid in devices.plugged:
                _attached(iid, vid, say)
                continue
            try:
                vol = volumes.volumes().get(vid)
                if vol is None:
                    raise DeviceError(f"InvalidVolume.NotFound: The volume '{vid}' does not exist.")
                devices.plug(vid, volumes.volume_path(vol), volume_serial(vid))
            except DeviceError as e:
                say(f"attach {vid} failed: {e}")
                with store.instances().transaction():
                    _update(iid, lambda r, v=vid, m=str(e): hotplug.failed(r, v, m))
                    hotplug.settle_volumes(iid, [(vid, "detached")])
                continue
            _attached(iid, vid, say)
        else:
            try:
                waiting = devices.unplug(vid, bool(req.get("Force")))
            except DeviceError as e:
                say(f"detach {vid} failed: {e}")
                _update(iid, lambda r, v=vid, m=str(e): hotplug.failed(r, v, m))
                continue
            if waiting:
                say(
                    f"detach {vid}: asked the guest to let go"
                    + (" (forced)" if req.get("Force") else "")
                )
            else:  # this QEMU has no such device
                _detached(iid, vid, say)


def _attached(iid: str, vid: str, say: Say) -> None:
    # one transaction: the waiting command takes the request's end as its answer and reads
    # the volume's record at once, which must then say `attached` (it read `attaching`
    # when the two were written apart, on a loaded host)
    with store.instances().transaction():
        _update(iid, lambda r: hotplug.attached(r, vid))
        hotplug.settle_volumes(iid, [(vid, "attached")])
    say(f"attached {vid}")


def _detached(iid: str, vid: str, say: Say) -> None:
    with store.instances().transaction():
        _update(iid, lambda r: hotplug.detached(r, vid))
        hotplug.settle_volumes(iid, [(vid, "detached")])
    say(f"detached {vid}")


def unplugs(iid: str, devices: Devices, say: Say) -> None:
    """Detachments the guest (or a forced detach) has ended since the last look."""
    try:
        ended = devices.poll()
    except DeviceError as e:  # a forced detach QEMU refused: said on every open request
        say(f"detach failed: {e}")
        for vid in [v for v, p in devices.plugged.items() if p.force]:
            _update(iid, lambda r, v=vid, m=str(e): hotplug.failed(r, v, m))
        return
    for vid, outcome in ended:
        if outcome in (RELEASED, FORCED):
            _detached(iid, vid, say)
            if outcome == FORCED:
                say(f"{vid} forced out: the guest still holds a device that reads zeros")
        elif outcome == STUCK:
            rec = store.find(iid)
            m = hotplug.mapping(rec, vid)
            device = m["DeviceName"] if m else "its device"
            from harness.instances.devices import DETACH_TIMEOUT

            message = (f"IncorrectState: the guest did not let go of {device} ({vid}) within "
                       f"{DETACH_TIMEOUT:.0f} s; the volume stays detaching until it does or "
                       "the instance stops (unmount it in the guest, or detach-volume "
                       "--force)")  # fmt: skip
            say(f"detach {vid}: the guest did not let go")
            _update(iid, lambda r, v=vid, t=message: hotplug.failed(r, v, t))
