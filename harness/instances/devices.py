"""A running instance's EBS volumes as QEMU devices, plugged and unplugged over QMP.

Each volume is a device (virtio-blk on the Xen-era types, NVMe on Nitro ones, with the
volume ID as its serial, as at a cold start) reading through two block nodes: a raw filter
over the volume's qcow2 (harness.launch.machine names them for a volume attached at start;
a hot-plugged one gets the same two by `blockdev-add`). Attaching is `blockdev-add` and
`device_add`: QEMU announces the new PCI device to the guest (ACPI hot-plug on the `pc`
machine, a spare PCIe root port on q35) and is done. Detaching asks the guest: `device_del`,
then the guest ejects the device and QEMU reports DEVICE_DELETED, after which the nodes go
(`blockdev-del`) and the volume file is closed. A guest that does not let go (no ACPI
hot-plug support, or it is hung) keeps the device; a forced detach then swaps the raw
filter's child for a null device (`blockdev-reopen`), so the volume is closed and free at
once while the guest keeps a device that reads zeros, until it lets go or stops.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.launch.machine import node_names

# seconds a guest gets to let go of a device before detach-volume says it is stuck
DETACH_TIMEOUT = float(os.environ.get("AMILAB_DETACH_TIMEOUT", "30"))
# a forced detach still gives the guest this long to let go cleanly
FORCE_GRACE = min(5.0, DETACH_TIMEOUT)
DRIVERS = {"virtio": "virtio-blk-pci", "nvme": "nvme"}

RELEASED, FORCED, STUCK = "released", "forced", "stuck"


class DeviceError(Exception):
    """A plug or unplug QEMU refused; the message starts with EC2's error code."""


@dataclass
class Plugged:
    volume_id: str
    drive: str  # its nodes are node_names(drive); its device is drive + "disk"
    hot: bool  # plugged over QMP: its nodes are the monitor's to delete
    port: str | None = None  # q35: the root port it sits in
    deadline: float | None = None  # device_del sent: when the guest's time is up
    force: bool = False
    forced: bool = False  # the volume already swapped out (a forced detach)
    reported: bool = False  # STUCK said once

    @property
    def qdev(self) -> str:
        return f"{self.drive}disk"


class Devices:
    """The volumes of one QEMU as devices. `monitor` gives the QMP connection of the QEMU
    now running; `ports`: every PCIe root port of a q35 launch (None: `pc`, whose root bus
    takes hot-plugged devices itself)."""

    def __init__(self, monitor: Callable[[], Any], bus: str, ports: list[str] | None) -> None:
        self.monitor = monitor
        self.bus = bus
        self.ports = ports
        self.plugged: dict[str, Plugged] = {}
        self.zombies: dict[str, Plugged] = {}  # forced out, the guest still holds the device
        self.serial = 0

    def started(self, volume_ids: list[str]) -> None:
        """A QEMU has started with these volumes as its extra disks (disk1, disk2, ... in
        this order; on q35 in root ports hp1, hp2, ...)."""
        self.plugged.clear()
        self.zombies.clear()
        for i, vid in enumerate(volume_ids, 1):
            port = self.ports[i - 1] if self.ports else None
            self.plugged[vid] = Plugged(vid, f"disk{i}", hot=False, port=port)

    # ----------------------------------------------------------------- attach

    def plug(self, volume_id: str, path: Path, serial: str, fmt: str = "qcow2") -> None:
        driver = DRIVERS.get(self.bus)
        if driver is None:
            raise DeviceError(
                f"UnsupportedOperation: {self.bus} disks cannot be attached to a running "
                "instance here; stop it first"
            )
        where: dict[str, str] = {}
        port = None
        if self.ports is not None:
            used = {p.port for p in [*self.plugged.values(), *self.zombies.values()]}
            free = [p for p in self.ports if p not in used]
            if not free:
                raise DeviceError(
                    f"AttachmentLimitExceeded: no free PCIe slot left for {volume_id} "
                    f"({len(self.ports)} root ports); stop the instance and attach it then"
                )
            port = free[0]
            where["bus"] = port
        self.serial += 1
        drive = f"vol{self.serial}"
        top, node = node_names(drive)
        mon = self.monitor()
        try:
            mon.cmd("blockdev-add", driver=fmt, **{"node-name": node},
                    file={"driver": "file", "filename": str(path)})  # fmt: skip
            mon.cmd("blockdev-add", driver="raw", **{"node-name": top}, file=node)
            mon.cmd("device_add", driver=driver, id=f"{drive}disk", drive=top,
                    serial=serial, **where)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - QMP's refusal, said in one line below
            for name in (top, node):
                with contextlib.suppress(Exception):
                    mon.cmd("blockdev-del", **{"node-name": name})
            raise DeviceError(f"IncorrectState: QEMU could not attach {volume_id}: "
                              f"{_reason(e)}") from None  # fmt: skip
        self.plugged[volume_id] = Plugged(volume_id, drive, hot=True, port=port)

    # ----------------------------------------------------------------- detach

    def unplug(self, volume_id: str, force: bool) -> bool:
        """Ask the guest to let go; False when this QEMU has no such device (nothing to
        wait for). A forced request gives the guest FORCE_GRACE seconds, then ends it."""
        p = self.plugged.get(volume_id)
        if p is None:
            return False
        now = time.monotonic()
        # a new request, a request again after the guest's time ran out, or one now forced:
        # ask again (a request still within its time just goes on waiting)
        if p.deadline is None or now >= p.deadline or (force and not p.force):
            try:
                self.monitor().cmd("device_del", id=p.qdev)
            except Exception as e:  # noqa: BLE001
                if "in the process of unplug" not in str(e) and "already" not in str(e):
                    raise DeviceError(f"IncorrectState: QEMU could not detach {volume_id}: "
                                      f"{_reason(e)}") from None  # fmt: skip
            p.deadline = now + (FORCE_GRACE if force else DETACH_TIMEOUT)
            p.reported = False
            p.force = force
        return True

    def busy(self) -> bool:
        return any(p.deadline is not None for p in self.plugged.values()) or bool(self.zombies)

    def poll(self) -> list[tuple[str, str]]:
        """Unplugs that ended since the last call: (volume ID, RELEASED | FORCED | STUCK)."""
        if not self.busy():
            return []
        out: list[tuple[str, str]] = []
        mon = self.monitor()
        gone = set()
        with contextlib.suppress(Exception):  # no event yet
            for ev in mon.get_events(wait=False):
                if ev.get("event") == "DEVICE_DELETED":
                    gone.add((ev.get("data") or {}).get("device"))
        for qdev, z in list(self.zombies.items()):
            if qdev in gone:  # a forced-out device the guest let go of at last
                self._release(z)
                del self.zombies[qdev]
        now = time.monotonic()
        for vid, p in list(self.plugged.items()):
            if p.deadline is None:
                continue
            if p.qdev in gone:
                self._release(p)
                del self.plugged[vid]
                out.append((vid, RELEASED))
            elif now >= p.deadline and p.force:
                self._swap_out(p)
                del self.plugged[vid]
                self.zombies[p.qdev] = p
                out.append((vid, FORCED))
            elif now >= p.deadline and not p.reported:
                p.reported = True
                out.append((vid, STUCK))
        return out

    def _release(self, p: Plugged) -> None:
        """The device is gone: its nodes go too, which closes the volume. A drive from the
        command line outlives its device (it would keep the volume open and locked) and is
        not the monitor's to `blockdev-del`: HMP's `drive_del` ends it."""
        top, node = node_names(p.drive)
        mon = self.monitor()
        names = [f"{p.drive}-null"] if p.forced else []
        if p.hot:
            names = [top, *(names or [node])]
        else:
            with contextlib.suppress(Exception):
                mon.cmd("human-monitor-command", **{"command-line": f"drive_del {p.drive}"})
        for name in names:
            with contextlib.suppress(Exception):
                mon.cmd("blockdev-del", **{"node-name": name})

    def _swap_out(self, p: Plugged) -> None:
        """A forced detach: the raw filter reads from a null device from now on, and the
        volume's own nodes are closed (the command line's by losing their last user, the
        monitor's by `blockdev-del`)."""
        top, node = node_names(p.drive)
        mon = self.monitor()
        size = 1 << 30
        with contextlib.suppress(Exception):
            for n in mon.cmd("query-named-block-nodes", flat=True):
                if n.get("node-name") == node:
                    size = int(n["image"]["virtual-size"])
        null = f"{p.drive}-null"
        try:
            mon.cmd("blockdev-add", driver="null-co", **{"node-name": null},
                    size=size, **{"read-zeroes": True})  # fmt: skip
            mon.cmd("blockdev-reopen", options=[{"driver": "raw", "node-name": top, "file": null}])
        except Exception as e:  # noqa: BLE001
            raise DeviceError(f"IncorrectState: QEMU could not force {p.volume_id} out: "
                              f"{_reason(e)}") from None  # fmt: skip
        if p.hot:
            with contextlib.suppress(Exception):
                mon.cmd("blockdev-del", **{"node-name": node})
        p.forced = True


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
