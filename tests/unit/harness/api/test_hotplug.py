"""Volumes attached to and detached from a running instance, without booting a guest: the
record's requests and outcomes, the command lines that make hot-plug possible (q35's root
ports, instances only), and AttachVolume/DetachVolume through boto3 and the CLI against a
real QEMU that stands paused where the guest would run (standin_supervisor.py drives the
supervisor's own volume handling). A paused guest never acknowledges an unplug, so a detach
stays stuck until forced; the guest's side of an unplug is checked on a real guest by
tests/integration/test_instances.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from builder.errors import BadInput
from builder.images import volumes
from builder.images.shapes import acting_as
from harness.instances import hotplug, store, supervisor
from harness.instances.operations import attachments
from harness.launch.accel import Accelerator
from harness.launch.machine import Disk, MachineSpec, command_line
from tests.conftest import ROOT, need, run_amilab
from tests.unit.builder.images.test_lifecycle import register_fake
from tests.unit.harness.api.conftest import A
from tests.unit.harness.api.test_instance_attributes import _instance

NOW = "2026-01-01T00:00:00.000Z"


def _record() -> dict[str, Any]:
    return {
        "InstanceId": "i-0123456789abcdef0", "RootDeviceName": "/dev/sda1",
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeId": "vol-root",
                                 "Status": "attached"}}],
        "Amilab": {},
    }  # fmt: skip


def _statuses(rec: dict) -> dict[str, str]:
    return {m["DeviceName"]: m["Ebs"]["Status"] for m in rec["BlockDeviceMappings"]}


def test_requests_and_their_outcomes_on_the_record() -> None:
    rec = _record()
    hotplug.want_attach(rec, "vol-a", "/dev/sdf", NOW)
    hotplug.want_attach(rec, "vol-b", "/dev/sdg", NOW)
    assert _statuses(rec) == {"/dev/sda1": "attached", "/dev/sdf": "attaching",
                              "/dev/sdg": "attaching"}  # fmt: skip
    assert set(hotplug.open_requests(rec)) == {"vol-a", "vol-b"}
    hotplug.attached(rec, "vol-a")
    hotplug.failed(rec, "vol-b", "IncorrectState: QEMU could not attach vol-b: locked")
    assert _statuses(rec) == {"/dev/sda1": "attached", "/dev/sdf": "attached"}
    assert hotplug.open_requests(rec) == {}  # a failed one waits for its command, not QEMU
    assert hotplug.take_error(rec, "vol-b") == "IncorrectState: QEMU could not attach vol-b: locked"
    assert hotplug.requests(rec) == {}

    hotplug.want_detach(rec, "vol-a", force=False)
    assert _statuses(rec)["/dev/sdf"] == "detaching"
    hotplug.failed(rec, "vol-a", "IncorrectState: the guest did not let go")
    assert hotplug.take_error(rec, "vol-a") == "IncorrectState: the guest did not let go"
    # a detach the guest has not done stays open (and detaching) after its command gave up
    assert _statuses(rec)["/dev/sdf"] == "detaching" and "vol-a" in hotplug.open_requests(rec)
    hotplug.detached(rec, "vol-a")
    assert _statuses(rec) == {"/dev/sda1": "attached"} and hotplug.requests(rec) == {}


def test_a_qemu_that_ended_settles_what_was_open() -> None:
    rec = _record()
    hotplug.want_attach(rec, "vol-a", "/dev/sdf", NOW)
    hotplug.want_attach(rec, "vol-b", "/dev/sdg", NOW)
    hotplug.attached(rec, "vol-b")
    hotplug.want_detach(rec, "vol-b", force=True)
    hotplug.want_attach(rec, "vol-c", "/dev/sdh", NOW)
    hotplug.failed(rec, "vol-c", "refused")
    # an attach not yet done is an attachment the next start has; a detach is done
    assert sorted(hotplug.settle(rec)) == [("vol-a", "attached"), ("vol-b", "detached")]
    assert _statuses(rec) == {"/dev/sda1": "attached", "/dev/sdf": "attached"}
    assert "Hotplug" not in rec["Amilab"]
    assert supervisor.extra_volume_ids(rec) == ["vol-a"]


def _spec(profile: str, spare: int, extra: int = 1) -> MachineSpec:
    vols = [Disk(Path(f"/v/vol-{i}.qcow2"), "qcow2", "nvme", persistent=True, serial=f"vol{i}")
            for i in range(1, extra + 1)]  # fmt: skip
    return MachineSpec(profile=profile, accelerator=Accelerator("tcg", "test"),
                       disk=Disk(Path("/v/root.qcow2"), "qcow2", "nvme", persistent=True),
                       extra_disks=vols, qmp_socket="qmp.sock",
                       spare_ports=spare)  # fmt: skip


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def test_q35_instances_get_root_ports_and_other_launches_do_not(tmp_path: Path) -> None:
    argv = command_line(_spec("hvm-uefi", spare=2, extra=2))
    devices = _devices(argv)
    ports = [d for d in devices if d.startswith("pcie-root-port")]
    assert [p.split("id=")[1].split(",")[0] for p in ports] == ["hp1", "hp2", "hp3", "hp4"]
    # the volumes at start sit in ports of their own (q35's root bus unplugs nothing),
    # each port named before the device that uses it
    disks = [d for d in devices if d.startswith("nvme,id=disk")]
    assert [d.split("bus=")[1].split(",")[0] for d in disks] == ["hp1", "hp2"]
    assert max(devices.index(p) for p in ports) < min(devices.index(d) for d in disks)
    # volumes read through named nodes: a raw filter over the qcow2
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert "node-name=disk1-raw" in drives[1] and "file.node-name=disk1-fmt" in drives[1]
    # smoke, matrix and the pc machine: no ports, the command line as before
    assert not [d for d in _devices(command_line(_spec("hvm-uefi", 0))) if "root-port" in d]
    assert not [d for d in _devices(command_line(_spec("hvm-bios", 2))) if "root-port" in d]
    # QEMU takes it as composed
    need("qemu-system-x86_64", "qemu-system-x86")
    for name in ("root.qcow2", "vol-1.qcow2", "vol-2.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / name), "1M"],
                       check=True)  # fmt: skip
    real = [a.replace("/v/", f"{tmp_path}/") for a in argv]
    qemu = subprocess.Popen([*real, "-S"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "qmp.sock").exists() and qemu.poll() is None:
            assert time.monotonic() < deadline, "QEMU did not come up"
            time.sleep(0.05)
        assert qemu.poll() is None, qemu.communicate()[1]
    finally:
        qemu.kill()
        qemu.wait()


@contextlib.contextmanager
def _standin(api: dict, tmp_path: Path, profile: str = "hvm-bios") -> Iterator[dict[str, Any]]:
    """An instance of A's, running as far as the records go, its volumes in a paused QEMU
    (`profile`'s machine) that the stand-in supervisor drives."""
    need("qemu-system-x86_64", "qemu-system-x86")
    with acting_as(A.account_id):
        fake = register_fake(api["home"])
    iid = _instance(api["home"], fake["ami"], "stopped")
    store.instances().update(iid, lambda r: r["Amilab"]["Launch"].update(DiskBus="nvme"))
    work = tmp_path / "standin"
    work.mkdir()
    env = {**os.environ, "AMILAB_DETACH_TIMEOUT": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.harness.instances.standin_supervisor", iid, str(work),
         profile],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    try:
        yield {"iid": iid, "proc": proc, "api": api}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def running(api: dict, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with _standin(api, tmp_path) as got:
        yield got


def _locked(path: Path) -> bool:
    """Whether a QEMU holds the volume open (it takes the image's write lock)."""
    res = subprocess.run(["qemu-img", "info", str(path)], capture_output=True, text=True)
    return "lock" in res.stderr


def test_attach_and_detach_a_running_instance_through_the_api(running: dict) -> None:
    ec2, iid = running["api"]["client"](A), running["iid"]
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    path = volumes.volume_path(volumes.volumes().find(vid, "InvalidVolume.NotFound"))
    assert not _locked(path)
    t = time.monotonic()
    att = ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
    print(f"attach: {time.monotonic() - t:.2f} s")
    assert (att["State"], att["Device"]) == ("attached", "/dev/sdf")
    assert _locked(path)  # QEMU opened it: the device is there
    (vol,) = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert vol["State"] == "in-use" and vol["Attachments"][0]["State"] == "attached"
    (inst,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert {m["DeviceName"]: m["Ebs"]["Status"] for m in inst["BlockDeviceMappings"]} == {
        "/dev/sda1": "attached", "/dev/sdf": "attached"}  # fmt: skip

    other = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    with pytest.raises(ClientError) as info:  # the device name is taken
        ec2.attach_volume(VolumeId=other, InstanceId=iid, Device="/dev/sdf")
    assert info.value.response["Error"]["Code"] == "InvalidParameterValue"
    elsewhere = ec2.create_volume(AvailabilityZone="us-east-1b", Size=1)["VolumeId"]
    with pytest.raises(ClientError) as info:
        ec2.attach_volume(VolumeId=elsewhere, InstanceId=iid, Device="/dev/sdg")
    assert info.value.response["Error"]["Code"] == "InvalidVolume.ZoneMismatch"

    # no guest acknowledges the unplug: the volume stays detaching, and says why
    with pytest.raises(ClientError) as info:
        ec2.detach_volume(VolumeId=vid)
    assert info.value.response["Error"]["Code"] == "IncorrectState"
    assert "did not let go" in info.value.response["Error"]["Message"]
    (vol,) = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert vol["State"] == "in-use" and vol["Attachments"][0]["State"] == "detaching"
    assert _locked(path)
    # the CLI says the same in one line, exit 2
    res = run_amilab("detach-volume", "--volume-id", vid,
                     env={"AMILAB_HOME": str(running["api"]["home"])})  # fmt: skip
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "IncorrectState" in res.stderr and "--force" in res.stderr
    # forced: the attachment ends, the volume is closed and free
    att = ec2.detach_volume(VolumeId=vid, Force=True)
    assert att["State"] == "detached"
    (vol,) = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert vol["State"] == "available" and vol["Attachments"] == []
    assert not _locked(path)
    (inst,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert [m["DeviceName"] for m in inst["BlockDeviceMappings"]] == ["/dev/sda1"]
    root = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    with pytest.raises(ClientError) as info:
        ec2.detach_volume(VolumeId=root)
    assert info.value.response["Error"]["Code"] == "OperationNotPermitted"

    # attached again (another device in the same QEMU), then its supervisor dies with a
    # detach open: the instance reads back stopped and the detach is done
    ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdg")
    with pytest.raises(ClientError):
        ec2.detach_volume(VolumeId=vid)
    running["proc"].send_signal(signal.SIGKILL)
    running["proc"].wait()
    (inst,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    (vol,) = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert inst["State"]["Name"] == "stopped"
    assert vol["State"] == "available"
    assert [m["DeviceName"] for m in inst["BlockDeviceMappings"]] == ["/dev/sda1"]


def test_attach_needs_a_running_or_stopped_instance(api: dict) -> None:
    with acting_as(A.account_id):
        fake = register_fake(api["home"])
    sleeper = subprocess.Popen(["sleep", "60"])  # stands for a supervisor still starting
    iid = _instance(api["home"], fake["ami"], "pending", supervisor=sleeper.pid)
    vid = volumes.create_volume(1)["VolumeId"]
    with pytest.raises(BadInput, match="^IncorrectInstanceState"):
        attachments.attach_volume(vid, iid, "/dev/sdf")
    with pytest.raises(BadInput, match="^InvalidParameterValue"):
        attachments.attach_volume(vid, iid, "sdf")
    assert volumes.volumes().find(vid, "x")["State"] == "available"
    sleeper.kill()
    sleeper.wait()


def test_a_request_that_met_a_stopping_instance_is_settled(api: dict) -> None:
    """Recorded just as the supervisor finished (it takes no lock): no QEMU will carry it
    out, so the waiting command settles it (attach: the next start has the disk)."""
    with acting_as(A.account_id):
        fake = register_fake(api["home"])
    iid = _instance(api["home"], fake["ami"], "stopped")
    vid = volumes.create_volume(1)["VolumeId"]
    volumes.attach(vid, iid, "/dev/sdf", False, "attaching")
    store.instances().update(iid, lambda r: hotplug.want_attach(r, vid, "/dev/sdf", NOW))
    attachments._await_hotplug(iid, vid, "attachment", timeout=5)
    rec = store.find(iid)
    assert _statuses(rec)["/dev/sdf"] == "attached" and "Hotplug" not in rec["Amilab"]
    assert volumes.volumes().find(vid, "x")["Attachments"][0]["State"] == "attached"


def test_q35_takes_as_many_volumes_while_running_as_it_has_spare_ports(
    api: dict, tmp_path: Path
) -> None:
    with _standin(api, tmp_path, "hvm-uefi") as got:
        ec2, iid = api["client"](A), got["iid"]
        made = [ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
                for _ in range(supervisor.SPARE_PORTS + 1)]  # fmt: skip
        for i, vid in enumerate(made[:-1]):
            att = ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device=f"/dev/sd{'fghij'[i]}")
            assert att["State"] == "attached"
            assert _locked(volumes.volume_path(volumes.volumes().find(vid, "x")))
        with pytest.raises(ClientError) as info:
            ec2.attach_volume(VolumeId=made[-1], InstanceId=iid, Device="/dev/sdk")
        assert info.value.response["Error"]["Code"] == "AttachmentLimitExceeded"
        (vol,) = ec2.describe_volumes(VolumeIds=[made[-1]])["Volumes"]
        assert vol["State"] == "available"  # nothing half-made
        (inst,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
        assert "/dev/sdk" not in [m["DeviceName"] for m in inst["BlockDeviceMappings"]]
        # a device forced out keeps its port until the guest lets go of it (never, here)
        ec2.detach_volume(VolumeId=made[0], Force=True)
        with pytest.raises(ClientError) as info:
            ec2.attach_volume(VolumeId=made[-1], InstanceId=iid, Device="/dev/sdk")
        assert info.value.response["Error"]["Code"] == "AttachmentLimitExceeded"
