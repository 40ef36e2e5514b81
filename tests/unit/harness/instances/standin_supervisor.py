"""Stands for an instance's supervisor in unit tests: `python -m ... INSTANCE_ID DIR`.

A real QEMU, paused before its firmware runs (no guest: nothing boots), with the instance's
volumes as the machine layer composes them for an instance, and the supervisor's own volume
handling on SIGUSR2 (`supervisor._volume_requests`, `supervisor._unplugs`). With no guest to
answer, an unplug is never acknowledged: a detach is stuck until forced. It records itself as
the instance's supervisor, prints "ready", and ends on SIGTERM; QEMU dies with it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from harness.instances import store, supervisor
from harness.instances.devices import Devices
from harness.launch.accel import Accelerator
from harness.launch.machine import MachineSpec, command_line, hotplug_ports
from harness.launch.process import QemuProcess

_flags: list[str] = []


def _on(signum: int, frame: FrameType | None) -> None:
    _flags.append("volumes" if signum == signal.SIGUSR2 else "stop")


def main(iid: str, workdir: Path, profile: str = "hvm-bios") -> int:
    signal.signal(signal.SIGUSR2, _on)
    signal.signal(signal.SIGTERM, _on)
    rec = store.find(iid)
    bus = supervisor.disk_bus(rec)
    root, extra = supervisor.attached_disks(rec, bus)
    spec = MachineSpec(profile=profile, accelerator=Accelerator("tcg", "stand-in"), disk=root,
                       extra_disks=extra, qmp_socket="qmp.sock",
                       spare_ports=supervisor.SPARE_PORTS)  # fmt: skip
    qemu = QemuProcess([*command_line(spec), "-S"], workdir, workdir / "qemu.log")
    qemu.start()
    qemu.qmp(workdir / "qmp.sock")
    ports = hotplug_ports(spec) if profile == "hvm-uefi" else None
    devices = Devices(lambda: qemu.qmp(workdir / "qmp.sock"), bus, ports)
    devices.started(supervisor.extra_volume_ids(rec))

    def running(r: dict) -> None:
        r["Amilab"]["Supervisor"] = {"Pid": os.getpid(), "Start": store.process_start(os.getpid())}
        store.set_state(r, "running")

    store.instances().update(iid, running)
    print("ready", flush=True)
    try:
        while "stop" not in _flags:
            if _flags:
                _flags.pop(0)
                supervisor._volume_requests(iid, devices)
            if devices.busy():
                supervisor._unplugs(iid, devices)
            time.sleep(0.05)
    finally:
        qemu.stop(workdir / "qmp.sock", timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:]))
