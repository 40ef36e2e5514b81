"""EC2's hibernation rules on instance records without a guest (through boto3, the library
and the CLI), and the supervisor's side of a resume: which saved states still fit, and a real
QEMU (no guest) hibernated into its instance's record, or left running when the save fails.
tests/integration/test_hibernate.py does it all on a real guest."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from builder.errors import BadInput
from builder.images import volumes
from builder.images.shapes import acting_as
from harness.instances import hibernation, store
from harness.instances.operations import stop
from harness.launch import migration
from harness.launch.process import QemuProcess
from tests.conftest import run_amilab
from tests.unit.harness.api.conftest import A
from tests.unit.harness.api.test_instance_attributes import _instance, error_of, fake, sleeper

__all__ = ["fake", "sleeper"]  # fixtures, used by name

QEMU = "qemu-system-x86_64"


def test_hibernation_options_parse_as_the_aws_cli_writes_them() -> None:
    assert hibernation.parse_options("Configured=true") is True
    assert hibernation.parse_options("Configured=false") is False
    assert hibernation.parse_options('{"Configured": true}') is True
    for bad in ("Configured=yes", "Enabled=true", "{}", "true"):
        with pytest.raises(BadInput, match="--hibernation-options"):
            hibernation.parse_options(bad)


def test_the_root_volume_must_hold_the_ram() -> None:
    hibernation.check_launch(True, 1740, "m1.small", 2)
    hibernation.check_launch(False, 3840, "m1.medium", 2)  # not configured: no rule
    with pytest.raises(
        BadInput,
        match=r"^UnsupportedHibernationConfiguration: For hibernation, "
        r"the root device volume .* 2 GiB, instance type m1.medium has 3.75 GiB",
    ):
        hibernation.check_launch(True, 3840, "m1.medium", 2)
    root = [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}, {"DeviceName": "/dev/sdb"}]
    assert hibernation.root_gib(root, "/dev/sda1", 2) == 8
    assert hibernation.root_gib(root, "/dev/xvda", 2) == 2  # the image's
    assert hibernation.root_gib([{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 1}}],
                                "/dev/sda1", 2) == 2  # fmt: skip


def test_run_instances_refuses_a_root_too_small_for_the_ram(api: dict, fake: dict) -> None:
    ec2 = api["client"](A)
    # the fake image's root volume is 1 GiB; m1.small has 1.7 GiB of RAM
    code, message = error_of(lambda: ec2.run_instances(
        ImageId=fake["ami"].image_id, MinCount=1, MaxCount=1,
        HibernationOptions={"Configured": True}))  # fmt: skip
    assert code == "UnsupportedHibernationConfiguration" and "1 GiB" in message
    with acting_as(A.account_id):
        cli = run_amilab("run-instances", fake["ami"].image_id, "--hibernation-options",
                         "Configured=true")  # fmt: skip
    assert cli.returncode == 2 and "UnsupportedHibernationConfiguration" in cli.stderr
    assert store.instances().list() == [] and volumes.volumes().list() == []  # nothing made


def test_only_an_instance_configured_at_launch_hibernates(
    api: dict, fake: dict, sleeper: subprocess.Popen
) -> None:
    ec2 = api["client"](A)
    iid = _instance(api["home"], fake["ami"], "running", supervisor=sleeper.pid)
    (shown,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert shown["HibernationOptions"] == {"Configured": False}  # a record from before it
    assert error_of(lambda: ec2.stop_instances(InstanceIds=[iid], Hibernate=True)) == (
        "UnsupportedHibernationConfiguration",
        "The instance can't be hibernated because it was not configured at launch for "
        f"hibernation: {iid}",
    )
    cli = run_amilab("stop-instances", "--hibernate", iid)
    assert cli.returncode == 2 and cli.stderr.startswith(
        "amilab: UnsupportedHibernationConfiguration"
    )  # fmt: skip
    assert sleeper.poll() is None and store.find(iid)["State"]["Name"] == "running"

    store.instances().update(iid, lambda r: r.update(HibernationOptions={"Configured": True}))
    (shown,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert shown["HibernationOptions"] == {"Configured": True}
    with pytest.raises(BadInput, match="^InvalidParameterCombination"):
        stop.stop_instances([iid], hibernate=True, force=True)
    # a "supervisor" that outlives the SIGTERM, so the record is read as the request left it
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 120 & wait"])
    try:
        sup = {"Pid": stubborn.pid, "Start": store.process_start(stubborn.pid)}
        store.instances().update(iid, lambda r: r["Amilab"].update(Supervisor=sup))
        (t,) = ec2.stop_instances(InstanceIds=[iid], Hibernate=True)["StoppingInstances"]
        assert t["CurrentState"]["Name"] == "stopping"
        rec = store.find(iid)
        assert rec["Amilab"]["Desired"] == hibernation.DESIRED
        assert rec["StateReason"] == {
            "Code": "Client.UserInitiatedHibernate",
            "Message": "Client.UserInitiatedHibernate: User initiated hibernate",
        }
    finally:
        stubborn.kill()
        stubborn.wait()


def _hibernated(api: dict, fake: dict, tmp: Path) -> tuple[str, Path]:
    iid = _instance(api["home"], fake["ami"], "stopped")
    path = hibernation.state_file(store.find(iid))
    assert path is not None and path.parent == volumes.volumes_dir()
    path.write_bytes(b"saved RAM")
    path.with_name(path.name + migration.PARTIAL).write_bytes(b"half")

    def saved(r: Any) -> None:
        r["HibernationOptions"] = {"Configured": True}
        r["Amilab"]["Hibernation"] = {"File": str(path), "Bytes": 9, "SavedAt": "now",
                                      "QemuVersion": "7.2.22", "Fingerprint": "x"}  # fmt: skip

    store.instances().update(iid, saved)
    return iid, path


def test_a_hibernated_instance_keeps_its_type_and_kernel_and_terminating_drops_the_state(
    api: dict, fake: dict, tmp_path: Path
) -> None:
    ec2 = api["client"](A)
    iid, path = _hibernated(api, fake, tmp_path)
    for change in ({"InstanceType": {"Value": "m1.large"}},
                   {"Kernel": {"Value": fake["aki2"].image_id}},
                   {"Ramdisk": {"Value": fake["ari2"].image_id}}):  # fmt: skip
        code, message = error_of(lambda c=change: ec2.modify_instance_attribute(
            InstanceId=iid, **c))  # fmt: skip
        assert code == "IncorrectInstanceState" and "is hibernated" in message
    cli = run_amilab("modify-instance-attribute", iid, "--instance-type", "m1.large")
    assert cli.returncode == 2 and "IncorrectInstanceState" in cli.stderr
    ec2.modify_instance_attribute(InstanceId=iid, UserData={"Value": b"#!/bin/sh\n"})  # may
    assert store.find(iid)["InstanceType"] == "m1.small"
    ec2.terminate_instances(InstanceIds=[iid])
    assert not path.exists() and list(volumes.volumes_dir().glob("*.hibernation*")) == []


def test_a_resume_checks_the_saved_state_still_fits(api: dict, fake: dict, tmp_path: Path) -> None:
    iid, path = _hibernated(api, fake, tmp_path)
    version = migration.binary_version(QEMU)
    assert version is not None
    argv = [QEMU, "-m", "1740", "-drive", "file=root.qcow2"]

    def prepare(saved: dict[str, Any], now: list[str]) -> tuple[Any, Any]:
        store.instances().update(iid, lambda r: r["Amilab"]["Hibernation"].update(saved))
        prep, done = hibernation.resume_steps(store.find(iid), lambda _: None)
        s = SimpleNamespace(argv=list(now))
        prep.run(s)  # type: ignore[arg-type]
        return s, prep.shared  # type: ignore[attr-defined]

    fits = {"QemuVersion": version, "Fingerprint": migration.fingerprint(version, argv),
            "Argv": argv}  # fmt: skip
    s, shared = prepare(fits, argv)
    assert s.argv == argv + migration.INCOMING and shared.file == path and shared.note == ""
    assert not path.with_name(path.name + migration.PARTIAL).exists()  # a leftover is cleared

    s, shared = prepare(fits, argv + ["-drive", "file=vol-2.qcow2"])  # a volume attached
    assert migration.INCOMING[0] not in s.argv and shared.file is None
    assert shared.note == ("cold boot: the hibernated state was not resumed: the instance's "
                           "QEMU command line changed since (now file=vol-2.qcow2)")  # fmt: skip
    s, shared = prepare({**fits, "QemuVersion": "6.2.0"}, argv)
    assert shared.note.endswith(f"it was saved by QEMU 6.2.0, this is {version}")
    path.unlink()
    s, shared = prepare(fits, argv)
    assert shared.note.endswith("its file is missing")

    # what the supervisor writes once running after such a start
    rec: dict[str, Any] = {"StateTransitionReason": "", "Amilab": {"Resume": {"Note": "cold x"}}}
    hibernation.running_reason(rec)
    assert rec["StateTransitionReason"] == "amilab: cold x"
    rec = {"StateTransitionReason": "", "Amilab": {"Resume": {"Note": "resumed from hibernation"}}}
    hibernation.running_reason(rec)
    assert rec["StateTransitionReason"] == ""  # as EC2 shows a running instance


def test_the_supervisor_saves_a_real_qemu_or_leaves_it_running(
    api: dict, fake: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iid = _instance(api["home"], fake["ami"], "running")
    argv = [QEMU, "-machine", "pc", "-nodefaults", "-display", "none", "-m", "64",
            "-bios", "qboot.rom", "-qmp", "unix:qmp.sock,server=on,wait=off"]  # fmt: skip
    qemu = QemuProcess(argv, tmp_path, tmp_path / "qemu.log")
    qemu.start()
    inst = SimpleNamespace(qemu=qemu, dir=SimpleNamespace(qmp_socket=tmp_path / "qmp.sock"),
                           argv=argv)  # fmt: skip
    logged: list[str] = []
    try:
        # a save that cannot be written: still running, the record says so, no file left
        real = hibernation.state_file
        monkeypatch.setattr(hibernation, "state_file", lambda r: tmp_path / "gone" / "x")
        assert hibernation.hibernate(iid, inst, logged.append) is None  # type: ignore[arg-type]
        rec = store.find(iid)
        assert rec["State"]["Name"] == "running" and not rec["Amilab"].get("Hibernation")
        assert rec["StateTransitionReason"].startswith("amilab: hibernation failed (")
        assert qemu.qmp(tmp_path / "qmp.sock").cmd("query-status")["running"]
        with pytest.raises(BadInput, match="could not be hibernated"):
            hibernation.refuse_if_failed(rec)
        monkeypatch.setattr(hibernation, "state_file", real)

        final, reason = hibernation.hibernate(iid, inst, logged.append)  # type: ignore[arg-type,misc]
        assert (final, reason) == ("stopped", hibernation.HIBERNATE)
        assert not qemu.alive()  # saved, then ended
        saved = store.find(iid)["Amilab"]["Hibernation"]
        path = Path(saved["File"])
        assert path == hibernation.state_file(store.find(iid)) and path.stat().st_size > 0
        assert saved["Fingerprint"] == migration.fingerprint(saved["QemuVersion"], argv)
        assert [p.name for p in volumes.volumes_dir().glob("*.hibernation*")] == [path.name]
    finally:
        qemu.kill()
