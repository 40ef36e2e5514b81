"""The process behind one running instance: `python -m harness.instances.supervisor i-…`.

It owns the instance's QEMU, its network's QEMU, its metadata service (a thread) and its
console log, and it alone moves the instance through pending → running → stopping →
stopped (or shutting-down → terminated), writing each state to the registry. Commands reach
it by signal: SIGTERM stops or terminates it (the record's `Amilab.Desired` says which),
SIGHUP reboots it, SIGUSR1 reloads its scheduled events, SIGUSR2 carries out the volume
attachments and detachments the record asks for (harness.instances.volume_requests). Both
QEMUs are started with the parent-death signal from this process's main thread, so a `kill -9`
of the supervisor kills them too; describe-instances notices the dead supervisor (PID and
start time) and says stopped, with the reason.

A guest that powers itself off stops (or terminates, per its
instance-initiated shutdown behaviour); one that reboots is started again on the same
volumes. The console tells which: Linux prints "reboot: Power down" or "reboot: Restarting
system" last, and QEMU (-no-reboot) exits either way.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from builder.errors import AmilabError
from builder.images import volumes
from builder.images.records import now_iso
from builder.images.tables import Row
from builder.steps import Step, StepRunner
from harness.imds.document import block_device_mapping, document, write_document
from harness.instances import events, hibernation, hotplug, launch_images, store, volume_requests
from harness.instances.devices import Devices
from harness.instances.volume_requests import volume_serial
from harness.launch import accel
from harness.launch import instance as launch_dirs
from harness.launch.machine import Disk, hotplug_ports
from harness.launch.plan import make_plan
from harness.launch.ssh import ssh_answers
from harness.launch.steps import (
    ComposeCommand,
    Instance,
    LaunchOptions,
    StartMetadataService,
    StartNetwork,
    StartQemu,
    WriteMetadata,
    compose_commands,
)
from harness.launch.types import instance_type

POLL = 0.2
# how often the record is read for a stop or termination whose signal never came: the command
# that recorded it was killed between its commit and its signal
RECHECK = 2.0
# seconds a guest gets to shut down on the ACPI power button before QEMU is ended (EC2 waits
# minutes; a guest with nothing handling the button, e.g. no systemd-logind, waits it out)
STOP_GRACE = float(os.environ.get("AMILAB_STOP_TIMEOUT", "20"))
REBOOT_LIMIT = 3  # guest-initiated reboots within REBOOT_WINDOW before it counts as a crash
REBOOT_WINDOW = 120.0
# q35 (HVM on UEFI): empty PCIe root ports an instance starts with, for volumes attached while
# it runs (each volume attached at start has a port of its own besides)
SPARE_PORTS = int(os.environ.get("AMILAB_SPARE_PORTS", "4"))

_requests: list[str] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    names = {signal.SIGHUP: "reboot", signal.SIGUSR1: "events", signal.SIGUSR2: "volumes"}
    _requests.append(names.get(signum, "stop"))


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


class OpenInstanceDir(Step[Instance]):
    """The instance's directory lives as long as the instance, not as long as one boot."""

    name = "instance"

    def __init__(self, record: Row) -> None:
        self.record = record

    def run(self, s: Instance) -> None:
        iid = self.record["InstanceId"]
        s.dir = launch_dirs.InstanceDir(iid, Path(self.record["Amilab"]["Dir"]))
        launch_dirs.instance_logs().mkdir(parents=True, exist_ok=True)
        s.public_key = self.record["Amilab"]["PublicKey"]
        key = s.dir.path / "id_ed25519"
        s.key_path = key if key.exists() else None


def extra_volume_ids(record: Row) -> list[str]:
    """The EBS volumes besides the root, in mapping order: QEMU's disk1, disk2, ..."""
    return [m["Ebs"]["VolumeId"] for m in record["BlockDeviceMappings"]
            if m["DeviceName"] != record["RootDeviceName"]]  # fmt: skip


def attached_disks(record: Row, bus: str) -> tuple[Disk, list[Disk]]:
    """The root volume and the other block devices: the EBS volumes in mapping order
    (`extra_volume_ids`), then the instance store."""
    root: Disk | None = None
    others: list[Disk] = []
    for m in record["BlockDeviceMappings"]:
        vol = volumes.volumes().find(m["Ebs"]["VolumeId"], "InvalidVolume.NotFound")
        serial = volume_serial(vol["VolumeId"])
        disk = Disk(volumes.volume_path(vol), "qcow2", bus, persistent=True, serial=serial)
        if m["DeviceName"] == record["RootDeviceName"]:
            root = disk
        else:
            others.append(disk)
    for i, path in enumerate(record["Amilab"].get("InstanceStore", [])):
        others.append(Disk(Path(path), "qcow2", bus, persistent=True, serial=f"ephemeral{i}"))
    if root is None:
        raise AmilabError(f"{record['InstanceId']} has no root volume")
    return root, others


def instance_metadata(record: Row) -> dict[str, Any]:
    """What the metadata service serves beyond what the image gives."""
    a = record["Amilab"]
    md: dict[str, Any] = dict(a["Launch"].get("Metadata") or {})
    if "user_data_b64" in md:
        import base64

        md["user_data"] = base64.b64decode(md.pop("user_data_b64"))
    md["public_key"] = a["PublicKey"]
    md["key_name"] = record.get("KeyName") or f"amilab-{record['InstanceId']}"
    md["instance_type"] = record["InstanceType"]
    md["availability_zone"] = record["Placement"]["AvailabilityZone"]
    md["ami_launch_index"] = record.get("AmiLaunchIndex", 0)
    md["reservation_id"] = a.get("ReservationId", "")
    mappings = [
        {"DeviceName": m["DeviceName"], "Ebs": {}} for m in record["BlockDeviceMappings"]
    ] + [
        {"DeviceName": d, "VirtualName": f"ephemeral{i}"}
        for i, d in enumerate(a.get("InstanceStoreDevices", []))
    ]
    md["block_device_mapping"] = block_device_mapping(record["RootDeviceName"], mappings)
    if (spot := a.get("Spot")) and time.time() >= spot["NoticeAt"]:
        md.setdefault("extra", {})["spot"] = spot
    md.setdefault("extra", {})["events"] = events.recent(a.get("Events") or [], time.time())
    return md


def disk_bus(record: Row) -> str:
    return str(record["Amilab"]["Launch"].get("DiskBus") or
               instance_type(record["InstanceType"]).disk_bus)  # fmt: skip


def build_instance(record: Row) -> Instance:
    a = record["Amilab"]
    launch = a["Launch"]
    registry = launch_images.registry_for(record)  # its AMI may be deregistered by now
    image = registry.find(record["ImageId"], "machine")
    itype = instance_type(record["InstanceType"])
    bus = disk_bus(record)
    plan = make_plan(
        image,
        kernel_ref=record.get("KernelId") if image.virtualization_type != "hvm" else None,
        ramdisk_ref=(record.get("RamdiskId") or "none")
        if image.virtualization_type != "hvm"
        else None,
        firmware=launch.get("Firmware"),
        disk_bus=bus,
        append=launch.get("Append"),
        registry=registry,
    )
    plan.disk, extra = attached_disks(record, bus)
    plan.imported = False  # an instance's volume is its own; VM Import's fixes went into it
    options = LaunchOptions(
        accelerator=accel.choose(launch.get("Accel") or "auto"),
        open_network=bool(launch.get("OpenNetwork")),
        extra_layers=list(launch.get("Layers") or []),
        metadata=instance_metadata(record),
        ssh_address=record["PublicIpAddress"],
        ssh_port=int(a.get("SshPort") or 22),
        extra_disks=extra,
        spare_ports=SPARE_PORTS,
        memory_mib=itype.qemu_memory(),
        smp=itype.qemu_smp(),
        say=_log,
    )
    return Instance(plan, options)


def _update(iid: str, change: Any) -> Row:
    return store.instances().update(iid, change, "InvalidInstanceID.NotFound")


def _console_end(inst: Instance) -> str:
    """Why QEMU ended, from the console's last lines: poweroff, reboot or panic."""
    assert inst.dir is not None
    try:
        tail = inst.dir.console_log.read_text(errors="replace")[-4000:]
    except OSError:
        return "gone"
    if "Kernel panic" in tail:
        return "panic"
    if "reboot: Restarting system" in tail:
        return "reboot"
    if "reboot: Power down" in tail or "reboot: System halted" in tail:
        return "poweroff"
    return "gone"


def supervise(iid: str) -> int:
    record = store.find(iid)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    signal.signal(signal.SIGUSR1, _on_signal)
    signal.signal(signal.SIGUSR2, _on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # detached: no terminal's Ctrl-C is ours
    final = "stopped"
    reason: tuple[str, str] | None = store.USER_SHUTDOWN
    try:
        record = _expire_missed(iid)
        inst = build_instance(record)
        service = StartMetadataService()
        with StepRunner(inst) as runner:
            # hibernation: a saved state is loaded into QEMU around its start (or boots cold)
            prepare, resume = hibernation.resume_steps(record, _log)
            runner.run_all([OpenInstanceDir(record), WriteMetadata(), service,
                            ComposeCommand(), prepare, StartNetwork(), StartQemu(),
                            resume])  # fmt: skip
            probe = Reachability(inst.options.ssh_address, inst.options.ssh_port, service)
            devices = _devices(inst, record)
            try:
                final, reason = _run(iid, inst, service, record["Amilab"].get("Spot"), probe,
                                     devices)  # fmt: skip
            finally:
                probe.stop()
    except AmilabError as e:
        _log(f"launch failed: {e}")
        final = "stopped" if store.find(iid)["Amilab"].get("Desired") != "terminate" else final
        reason = ("Server.InternalError", f"Server.InternalError: {str(e).splitlines()[0]}")
    except BaseException as e:  # noqa: BLE001 - the record must say what happened
        _log(f"supervisor failed: {type(e).__name__}: {e}")
        reason = ("Server.InternalError", f"Server.InternalError: {type(e).__name__}: {e}")
        raise
    finally:
        _finish(iid, final, reason)
    return 0


SPOT_REASON = (
    "Server.SpotInstanceTermination",
    "Server.SpotInstanceTermination: Spot instance termination",
)


def _interrupted(r: Row, terminate: bool) -> None:
    r["Amilab"]["Desired"] = "terminate" if terminate else "stop"
    store.set_state(r, "shutting-down" if terminate else "stopping", SPOT_REASON)


def _expire_missed(iid: str) -> Row:
    """Events whose time came while the instance was stopped are over: a stopped instance
    needs no reboot or stop (EC2 completes them too)."""

    def change(r: Row) -> None:
        for e in r["Amilab"].get("Events") or []:
            if e["State"] == "active" and e["NotBefore"] <= time.time():
                events.complete(e)

    return _update(iid, change)


def _serve(inst: Instance, service: StartMetadataService) -> None:
    """The metadata service serves the instance's metadata as it now is."""
    assert inst.metadata is not None and inst.dir is not None
    tree = document(inst.metadata)
    write_document(inst.metadata, inst.dir.metadata_doc)
    if service.server is not None:
        service.server.tree = tree  # one reference swap: a request sees the old or the new


def _reload_events(iid: str, inst: Instance, service: StartMetadataService) -> list[Row]:
    assert inst.metadata is not None
    found = list(store.find(iid)["Amilab"].get("Events") or [])
    inst.metadata.extra["events"] = events.recent(found, time.time())
    _serve(inst, service)
    return found


def _carry_out(iid: str, inst: Instance, service: StartMetadataService, event: Row) -> str:
    """An event's time has come: it is completed (history), then done."""
    action = events.ACTIONS[event["Code"]]
    _log(f"scheduled event {event['EventId']} ({event['Code']}): {action}")

    def change(r: Row) -> None:
        for e in r["Amilab"].get("Events") or []:
            if e["EventId"] == event["EventId"]:
                events.complete(e)
        if action == "stop":
            r["Amilab"]["Desired"] = "stop"
            store.set_state(r, "stopping", events.SCHEDULED_STOP)

    _update(iid, change)
    _reload_events(iid, inst, service)
    return action


def _announce(inst: Instance, service: StartMetadataService, spot: dict[str, Any]) -> None:
    """From now on the metadata service serves spot/instance-action."""
    assert inst.metadata is not None and inst.dir is not None
    inst.metadata.extra["spot"] = spot
    _serve(inst, service)
    _log(f"spot interruption announced: {spot['Action']} at {spot['Time']}")


class Reachability:
    """Whether the guest has answered since this start: EC2's reachability check, which
    DescribeInstanceStatus reports (`operations.status_check`). The guest has answered once
    its SSH server's banner reaches the instance's port (a thread probes it, as logins
    do: harness.launch.ssh) or once it has asked the metadata service anything."""

    def __init__(self, address: str, port: int, service: StartMetadataService) -> None:
        self.service = service
        self.reached = threading.Event()
        self.done = threading.Event()
        self.reported = False
        self.thread = threading.Thread(target=self._probe, args=(address, port),
                                       name="reachability", daemon=True)  # fmt: skip
        self.thread.start()

    def _probe(self, address: str, port: int) -> None:
        while not self.done.is_set() and not self.reached.is_set():
            try:
                if ssh_answers(port, address, wait=5.0):
                    self.reached.set()
            except OSError:  # the forwarded port is not open yet (or any more)
                self.done.wait(1.0)

    def answered(self) -> bool:
        server = self.service.server
        return self.reached.is_set() or (server is not None and server.answered > 0)

    def stop(self) -> None:
        self.done.set()


def _devices(inst: Instance, record: Row) -> Devices:
    """The instance's volumes as its QEMU has them (q35: in which root ports)."""
    assert inst.spec is not None and inst.dir is not None
    qmp_socket = inst.dir.qmp_socket

    def monitor() -> Any:
        assert inst.qemu is not None
        return inst.qemu.qmp(qmp_socket)

    ports = hotplug_ports(inst.spec) if inst.spec.profile == "hvm-uefi" else None
    devices = Devices(monitor, disk_bus(record), ports)
    devices.started(extra_volume_ids(record))
    return devices


def _volume_requests(iid: str, devices: Devices) -> None:
    volume_requests.carry_out(iid, devices, _log)


def _unplugs(iid: str, devices: Devices) -> None:
    volume_requests.unplugs(iid, devices, _log)


def _run(
    iid: str,
    inst: Instance,
    service: StartMetadataService,
    spot: dict[str, Any] | None,
    probe: Reachability,
    devices: Devices,
) -> tuple[str, tuple[str, str] | None]:
    assert inst.qemu is not None and inst.dir is not None

    def running(r: Row) -> None:
        r["Amilab"]["QemuPid"] = inst.qemu.pid if inst.qemu else None
        r["Amilab"]["NetworkPid"] = inst.net.pid if inst.net else None
        r["Amilab"]["Reachable"] = None  # until the guest answers (Reachability)
        if r["State"]["Name"] == "pending":
            store.set_state(r, "running")
            hibernation.running_reason(r)  # a resume that booted cold says so

    _update(iid, running)
    _log(f"running: QEMU {inst.qemu.pid}")
    reboots: list[float] = []
    announced = bool(spot) and "spot" in (inst.options.metadata.get("extra") or {})
    scheduled = list(store.find(iid)["Amilab"].get("Events") or [])
    recheck = time.monotonic() + RECHECK
    while True:
        if not probe.reported and probe.answered():
            probe.reported = True
            probe.stop()
            _update(iid, lambda r: r["Amilab"].update(Reachable=now_iso()))
            _log("reachable: the guest answered (instance status ok)")
        if (event := events.due(scheduled, time.time())) is not None:
            action = _carry_out(iid, inst, service, event)
            scheduled = _reload_events(iid, inst, service)
            if action == "reboot":
                _restart(inst, devices, powerdown=True, timeout=2.0)
                continue
            inst.qemu.stop(inst.dir.qmp_socket, timeout=STOP_GRACE, powerdown=True)
            return "stopped", events.SCHEDULED_STOP
        if devices.busy():
            _unplugs(iid, devices)
        if not _requests and time.monotonic() >= recheck:
            recheck = time.monotonic() + RECHECK
            if store.find(iid)["State"]["Name"] in ("stopping", "shutting-down"):
                _log("a stop is recorded but was not signalled (its caller died): carried out")
                _requests.append("stop")
        if _requests:
            what = _requests.pop(0)
            if what == "events":
                scheduled = _reload_events(iid, inst, service)
                continue
            if what == "volumes":
                _volume_requests(iid, devices)
                continue
            if what == "reboot":
                _log("reboot requested")
                _restart(inst, devices, powerdown=True)
                continue
            now = store.find(iid)["Amilab"]
            desired, force = now.get("Desired") or "stop", bool(now.get("Force"))
            _log(f"{desired} requested" + (" (forced)" if force else ""))
            if desired == hibernation.DESIRED:  # RAM saved beside the root volume, QEMU ended
                outcome = hibernation.hibernate(iid, inst, _log)
                if outcome is None:  # the save failed: the guest runs on, the record says why
                    continue
                return outcome
            # forced (stop-instances --force): no power button, QEMU is ended at once
            inst.qemu.stop(inst.dir.qmp_socket, timeout=STOP_GRACE, powerdown=not force)
            if inst.dir and not force:
                clean = _console_end(inst) == "poweroff"
                ignored = f"the guest ignored the power button; ended after {STOP_GRACE:.0f} s"
                _log("the guest shut down" if clean else ignored)
            if desired == "terminate":
                return "terminated", store.USER_SHUTDOWN
            return "stopped", store.USER_SHUTDOWN
        if spot and not announced and time.time() >= spot["NoticeAt"]:
            _announce(inst, service, spot)
            announced = True
        if spot and time.time() >= spot["At"]:
            _log(f"spot interruption: {spot['Action']}")
            terminate = spot["Action"] == "terminate"
            why = SPOT_REASON
            _update(iid, lambda r, t=terminate: _interrupted(r, t))
            inst.qemu.stop(inst.dir.qmp_socket, timeout=2.0, powerdown=True)
            return ("terminated" if spot["Action"] == "terminate" else "stopped"), why
        if not inst.qemu.alive():
            end = _console_end(inst)
            _log(f"QEMU exited ({end}, status {inst.qemu.exit_status()})")
            failure = _boot_failure(inst)
            if end == "panic" or failure is not None:
                # a kernel that panics would panic again: stopped, with the console's reason
                why = failure or "kernel panic"
                return "stopped", ("Server.InternalError", f"Server.InternalError: {why}")
            if end == "reboot":
                now = time.monotonic()
                reboots = [t for t in reboots if now - t < REBOOT_WINDOW] + [now]
                if len(reboots) <= REBOOT_LIMIT:
                    _restart(inst, devices, powerdown=False)
                    continue
                return "stopped", ("Server.InternalError",
                                   f"Server.InternalError: the guest restarted {len(reboots)} "
                                   f"times within {REBOOT_WINDOW:.0f} s")  # fmt: skip
            if end == "poweroff":
                behaviour = store.find(iid)["Amilab"].get("ShutdownBehavior", "stop")
                final = "terminated" if behaviour == "terminate" else "stopped"
                return final, store.GUEST_SHUTDOWN
            err = inst.qemu.stderr_tail(2)
            return "stopped", ("Server.InternalError",
                               "Server.InternalError: QEMU exited unexpectedly"
                               + (f": {err}" if err else ""))  # fmt: skip
        time.sleep(POLL)


def _boot_failure(inst: Instance) -> str | None:
    """The console's diagnosis of a boot that cannot succeed (harness.launch.console)."""
    if inst.watcher is None:
        return None
    inst.watcher.poll()
    failure = inst.watcher.failure()
    return failure.describe() if failure else None


def _restart(
    inst: Instance, devices: Devices, powerdown: bool, timeout: float = STOP_GRACE
) -> None:
    """A new QEMU on the same network and metadata (a reboot), with the volumes the record
    now maps: those attached or detached while the last one ran are cold-plugged or gone."""
    assert inst.qemu is not None and inst.dir is not None and inst.spec is not None
    if inst.qemu.alive():
        inst.qemu.stop(inst.dir.qmp_socket, timeout=timeout, powerdown=powerdown)
    iid = inst.instance_id
    record = _settle(iid)
    inst.plan.disk, inst.spec.extra_disks = attached_disks(record, disk_bus(record))
    inst.spec.disk = inst.plan.disk
    compose_commands(inst)
    StartQemu().run(inst)
    devices.started(extra_volume_ids(record))
    _update(iid, lambda r: r["Amilab"].update(QemuPid=inst.qemu.pid if inst.qemu else None))
    _log(f"restarted: QEMU {inst.qemu.pid if inst.qemu else '?'}")


def _settle(iid: str) -> Row:
    """The QEMU is gone: attachments and detachments still open are settled (`hotplug`)."""
    changes: list[tuple[str, str]] = []
    r = _update(iid, lambda r: changes.extend(hotplug.settle(r)))
    hotplug.settle_volumes(iid, changes)
    for vid, outcome in changes:
        _log(f"{outcome} {vid} (settled as its QEMU ended)")
    return r


def _finish(iid: str, final: str, reason: tuple[str, str] | None) -> None:
    from harness.instances.operations.common import release_terminated

    changes: list[tuple[str, str]] = []

    def change(r: Row) -> None:
        desired = r["Amilab"].get("Desired")
        name = "terminated" if desired == "terminate" or final == "terminated" else "stopped"
        store.set_state(r, name, reason)
        r["Amilab"].update(QemuPid=None, NetworkPid=None, Supervisor=None, Desired=None,
                           Force=None)  # fmt: skip
        changes.extend(hotplug.settle(r))

    r = _update(iid, change)
    hotplug.settle_volumes(iid, changes)
    if r["State"]["Name"] == "terminated":
        release_terminated(r)
    _log(f"{r['State']['Name']}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.instances.supervisor INSTANCE_ID", file=sys.stderr)
        return 2
    return supervise(args[0])


if __name__ == "__main__":
    sys.exit(main())
