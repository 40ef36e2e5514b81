"""ModifyInstanceAttribute through boto3 on instance records without a guest: what a stopped
instance may change and a running one may not, the protections that stop and terminate
(API and library, as the CLI calls it) honour, and that the next start's launch is built
from the changed record."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from builder.errors import BadInput
from builder.ids import random_id
from builder.images import volumes
from builder.images.records import now_iso
from builder.images.shapes import acting_as
from harness.instances import store
from harness.instances.operations import describe, stop
from harness.launch.types import instance_type
from tests.conftest import run_amilab
from tests.unit.builder.images.test_lifecycle import register_fake
from tests.unit.harness.api.conftest import A, B


def error_of(call: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]


def _instance(home: Path, ami: Any, state: str, supervisor: int | None = None) -> str:
    """A record as run-instances writes it, A's, with a real (empty) root volume."""
    iid = random_id("i")
    with acting_as(A.account_id):
        vol = volumes.create_volume(1)
    volumes.attach(vol["VolumeId"], iid, "/dev/sda1", True)
    rec = {
        "InstanceId": iid, "ImageId": ami.image_id, "State": store.state(state),
        "StateTransitionReason": "", "LaunchTime": now_iso(), "InstanceType": "m1.small",
        "KernelId": ami.kernel_id, "RamdiskId": ami.ramdisk_id,
        "Architecture": "x86_64", "VirtualizationType": "paravirtual",
        "Placement": {"AvailabilityZone": "us-east-1a", "Tenancy": "default"},
        "RootDeviceName": "/dev/sda1", "RootDeviceType": "ebs",
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {
            "VolumeId": vol["VolumeId"], "Status": "attached", "AttachTime": now_iso(),
            "DeleteOnTermination": True}}],
        "PublicIpAddress": "127.100.0.2", "PrivateIpAddress": "127.100.0.2", "Tags": [],
        "Amilab": {"OwnerId": A.account_id, "Dir": str(home / iid), "PublicKey": "ssh-ed25519 AAAA",
                   "ReservationId": random_id("r"), "ShutdownBehavior": "stop",
                   "Launch": {"Metadata": {}}},
    }  # fmt: skip
    if supervisor is not None:  # a live process stands for the supervisor: it reads running
        rec["Amilab"]["Supervisor"] = {"Pid": supervisor,
                                       "Start": store.process_start(supervisor)}  # fmt: skip
    store.instances().insert(iid, rec)
    return iid


@pytest.fixture
def fake(api: dict) -> dict:
    with acting_as(A.account_id):
        first = register_fake(api["home"])
        second = register_fake(api["home"], name="img2", seed=2)
    return {**first, "aki2": second["aki"], "ari2": second["ari"]}


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["sleep", "120"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_stopped_instance_takes_new_launch_settings_for_its_next_start(
    api: dict, fake: dict
) -> None:
    ec2 = api["client"](A)
    iid = _instance(api["home"], fake["ami"], "stopped")
    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "m1.large"})
    ec2.modify_instance_attribute(InstanceId=iid, Kernel={"Value": fake["aki2"].image_id})
    ec2.modify_instance_attribute(InstanceId=iid, Attribute="ramdisk",
                                  Value=fake["ari2"].image_id)  # fmt: skip
    ec2.modify_instance_attribute(InstanceId=iid, UserData={"Value": b"#!/bin/sh\necho hi\n"})
    attr = lambda name: ec2.describe_instance_attribute(InstanceId=iid, Attribute=name)  # noqa: E731
    assert attr("instanceType")["InstanceType"] == {"Value": "m1.large"}
    assert attr("kernel")["KernelId"] == {"Value": fake["aki2"].image_id}
    assert attr("ramdisk")["RamdiskId"] == {"Value": fake["ari2"].image_id}
    assert base64.b64decode(attr("userData")["UserData"]["Value"]) == b"#!/bin/sh\necho hi\n"
    (i,) = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    assert (i["InstanceType"], i["KernelId"]) == ("m1.large", fake["aki2"].image_id)

    # what the supervisor launches at the next start
    from harness.instances.supervisor import build_instance

    inst = build_instance(store.find(iid))
    assert inst.plan.kernel is not None and inst.plan.kernel.image_id == fake["aki2"].image_id
    assert inst.plan.ramdisk is not None and inst.plan.ramdisk.image_id == fake["ari2"].image_id
    assert inst.options.metadata["instance_type"] == "m1.large"
    assert inst.options.metadata["user_data"] == b"#!/bin/sh\necho hi\n"
    large, small = instance_type("m1.large"), instance_type("m1.small")
    assert (inst.options.memory_mib, inst.options.smp) == (large.qemu_memory(), large.qemu_smp())
    assert (large.qemu_memory(), large.qemu_smp()) != (small.qemu_memory(), small.qemu_smp())

    # refusals change nothing
    def refused(**change: Any) -> str:
        return error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, **change))[0]

    assert refused(InstanceType={"Value": "t3.micro"}) == "InvalidParameterCombination"  # hvm
    assert refused(InstanceType={"Value": "z9.huge"}) == "InvalidParameterValue"
    assert refused(Kernel={"Value": fake["ami"].image_id}) == "InvalidAMIID.NotFound"  # no AKI
    assert refused(UserData={"Value": b"x" * 16385}) == "InvalidParameterValue"
    assert refused(SourceDestCheck={"Value": False}) == "UnsupportedOperation"
    ec2.modify_instance_attribute(InstanceId=iid, SourceDestCheck={"Value": True})  # as it is
    assert store.find(iid)["InstanceType"] == "m1.large"
    # another account's instance is not there for B
    b = api["client"](B)
    assert error_of(lambda: b.modify_instance_attribute(
        InstanceId=iid, InstanceType={"Value": "m1.small"}))[0] == (
        "InvalidInstanceID.NotFound")  # fmt: skip


def test_a_running_instance_refuses_launch_settings_and_honours_protections(
    api: dict, fake: dict, sleeper: subprocess.Popen
) -> None:
    ec2 = api["client"](A)
    iid = _instance(api["home"], fake["ami"], "running", supervisor=sleeper.pid)
    for change in ({"InstanceType": {"Value": "m1.large"}},
                   {"Kernel": {"Value": fake["aki2"].image_id}},
                   {"UserData": {"Value": b"x"}}):  # fmt: skip
        assert error_of(lambda c=change: ec2.modify_instance_attribute(InstanceId=iid, **c)) == (
            "IncorrectInstanceState",
            f"The instance '{iid}' is not in the 'stopped' state.",
        )
    assert store.find(iid)["InstanceType"] == "m1.small"

    # at any time: the shutdown behaviour and the protections
    ec2.modify_instance_attribute(
        InstanceId=iid, InstanceInitiatedShutdownBehavior={"Value": "terminate"}
    )
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": True})
    ec2.modify_instance_attribute(InstanceId=iid, Attribute="disableApiStop", Value="true")
    attr = lambda name: ec2.describe_instance_attribute(InstanceId=iid, Attribute=name)  # noqa: E731
    assert attr("disableApiTermination")["DisableApiTermination"] == {"Value": True}
    assert attr("disableApiStop")["DisableApiStop"] == {"Value": True}
    assert attr("instanceInitiatedShutdownBehavior")["InstanceInitiatedShutdownBehavior"] == {
        "Value": "terminate"}  # fmt: skip
    assert store.find(iid)["Amilab"]["ShutdownBehavior"] == "terminate"  # the supervisor's

    assert error_of(lambda: ec2.terminate_instances(InstanceIds=[iid])) == (
        "OperationNotPermitted", f"The instance '{iid}' may not be terminated. Modify its "
        "'disableApiTermination' instance attribute and try again.")  # fmt: skip
    assert error_of(lambda: ec2.stop_instances(InstanceIds=[iid]))[0] == "OperationNotPermitted"
    with pytest.raises(BadInput, match="^OperationNotPermitted: .* may not be terminated"):
        stop.terminate_instances([iid])
    cli = run_amilab("terminate-instances", iid)  # the CLI says the same, in one line
    assert cli.returncode == 2 and "may not be terminated" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    assert sleeper.poll() is None and store.find(iid)["State"]["Name"] == "running"

    run_amilab("modify-instance-attribute", iid, "--no-disable-api-termination", check=True)
    assert ec2.describe_instance_attribute(InstanceId=iid, Attribute="disableApiTermination")[
        "DisableApiTermination"] == {"Value": False}  # fmt: skip
    (t,) = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"]
    assert t["CurrentState"]["Name"] == "shutting-down"
    assert sleeper.wait(timeout=10) is not None  # the "supervisor" was told (SIGTERM)
    describe.describe_instances([iid])  # the supervisor is gone: terminated
    protect = {"DisableApiTermination": {"Value": True}}
    assert error_of(lambda: ec2.modify_instance_attribute(InstanceId=iid, **protect)) == (
        "IncorrectInstanceState", f"The instance '{iid}' is terminated")  # fmt: skip


def test_instance_status_is_initializing_until_the_guest_answers(
    api: dict, fake: dict, sleeper: subprocess.Popen
) -> None:
    ec2 = api["client"](A)
    iid = _instance(api["home"], fake["ami"], "running", supervisor=sleeper.pid)
    store.instances().update(iid, lambda r: r["Amilab"].update(Reachable=None))  # just started

    def status() -> tuple[dict, dict]:
        (st,) = ec2.describe_instance_status(InstanceIds=[iid])["InstanceStatuses"]
        return st["InstanceStatus"], st["SystemStatus"]

    initializing = {"Status": "initializing",
                    "Details": [{"Name": "reachability", "Status": "initializing"}]}  # fmt: skip
    assert status() == (initializing, initializing)
    reach = [{"Name": "instance-status.reachability", "Values": ["passed"]}]
    assert ec2.describe_instance_status(Filters=reach)["InstanceStatuses"] == []
    (cli,) = describe.describe_instance_status([iid])["InstanceStatuses"]  # the CLI's
    assert cli["InstanceStatus"] == initializing

    # what the supervisor writes once the guest has answered; the waiter then returns
    store.instances().update(iid, lambda r: r["Amilab"].update(Reachable=now_iso()))
    ok = {"Status": "ok", "Details": [{"Name": "reachability", "Status": "passed"}]}
    assert status() == (ok, ok)
    ec2.get_waiter("instance_status_ok").wait(
        InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 2}
    )
    assert [s["InstanceId"] for s in ec2.describe_instance_status(Filters=reach)[
        "InstanceStatuses"]] == [iid]  # fmt: skip

    # a record from a supervisor that kept no reachability: running is ok, as before
    store.instances().update(iid, lambda r: r["Amilab"].pop("Reachable"))
    assert status() == (ok, ok)

    sleeper.kill()
    sleeper.wait()  # the supervisor is gone: stopped, and the checks do not apply
    (st,) = ec2.describe_instance_status(InstanceIds=[iid], IncludeAllInstances=True)[
        "InstanceStatuses"]  # fmt: skip
    assert st["InstanceState"]["Name"] == "stopped"
    assert st["InstanceStatus"] == st["SystemStatus"] == {"Status": "not-applicable"}


def test_reachability_is_an_ssh_banner_or_a_metadata_request() -> None:
    import time
    from types import SimpleNamespace

    from harness.instances.supervisor import Reachability
    from tests.unit.harness.launch.fake_sshd import serve

    service = SimpleNamespace(server=None)
    silent, stop_silent = serve("silent")
    talking, stop_talking = serve("banner")
    try:
        quiet = Reachability("127.0.0.1", silent, service)  # type: ignore[arg-type]
        sshd = Reachability("127.0.0.1", talking, service)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while not sshd.answered() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sshd.answered() and not quiet.answered()
        service.server = SimpleNamespace(answered=1)  # the guest asked the metadata service
        assert quiet.answered()
        quiet.stop()
        sshd.stop()
    finally:
        stop_silent.set()
        stop_talking.set()
