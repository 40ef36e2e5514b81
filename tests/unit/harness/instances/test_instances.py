"""Instance records without booting: EC2's refusals for instance types, key pairs, the
block device mapping shorthand, and a record whose supervisor is gone read back stopped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.errors import BadInput
from harness.instances import keypairs, store
from harness.instances.operations import describe, launch, stop
from harness.launch.types import check_image, instance_type


def test_instance_types_refuse_as_ec2() -> None:
    check_image(instance_type("m1.small"), "x86_64", "paravirtual")
    check_image(instance_type("t2.micro"), "x86_64", "hvm")
    with pytest.raises(BadInput, match="^InvalidParameterCombination: Virtualization type 'hvm'"):
        check_image(instance_type("t3.micro"), "x86_64", "paravirtual")
    with pytest.raises(BadInput, match="^InvalidParameterValue: The architecture 'arm64'"):
        check_image(instance_type("t4g.micro"), "x86_64", "hvm")
    with pytest.raises(BadInput, match="^InvalidParameterCombination: Non-Windows"):
        check_image(instance_type("t1.micro"), "x86_64", "hvm")
    with pytest.raises(BadInput, match="^InvalidParameterValue: Invalid value 'z9.huge'"):
        instance_type("z9.huge")
    assert instance_type("t3.micro").disk_bus == "nvme"
    assert instance_type("t2.micro").disk_bus == "virtio"


def test_block_device_mapping_shorthand() -> None:
    parse = launch.parse_block_device_mapping
    assert parse("/dev/sdb=ephemeral0") == {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}
    assert parse("/dev/sdb=none") == {"DeviceName": "/dev/sdb", "NoDevice": ""}
    assert parse("/dev/sdf=:2:false") == {
        "DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 2, "DeleteOnTermination": False}
    }  # fmt: skip
    assert parse("/dev/sdf=snap-1:") == {"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": "snap-1"}}
    for bad in ("sdb=ephemeral0", "/dev/sdf=:x", "/dev/sdf=", '[{"x": 1}]'):
        with pytest.raises(BadInput):
            parse(bad)


def test_key_pairs(amilab_home: Path, tmp_path: Path) -> None:
    row, private = keypairs.create_key_pair("k1")
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert row["KeyFingerprint"].startswith("SHA256:")
    assert private not in str(store.key_pairs().list())  # only the public half is kept
    with pytest.raises(BadInput, match="^InvalidKeyPair.Duplicate"):
        keypairs.create_key_pair("k1")
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    imported = keypairs.import_key_pair("mine", (tmp_path / "id.pub").read_text())
    assert (
        imported["KeyFingerprint"]
        in subprocess.run(
            ["ssh-keygen", "-l", "-f", str(tmp_path / "id.pub")], capture_output=True, text=True
        ).stdout
    )
    with pytest.raises(BadInput, match="^InvalidKey.Format"):
        keypairs.import_key_pair("bad", "ssh-ed25519 !!!notbase64")
    assert [r["KeyName"] for r in keypairs.describe_key_pairs()] == ["k1", "mine"]
    with pytest.raises(BadInput, match="^InvalidKeyPair.NotFound"):
        keypairs.describe_key_pairs(["nope"])
    assert keypairs.delete_key_pair("k1") and not keypairs.delete_key_pair("k1")


def test_dead_supervisor_reads_back_stopped_with_a_reason(amilab_home: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    rec = {
        "InstanceId": "i-0123456789abcdef0", "ImageId": "ami-0123456789abcdef0",
        "State": store.state("running"), "InstanceType": "m1.small", "Tags": [],
        "BlockDeviceMappings": [],
        "Amilab": {"Dir": str(amilab_home / "x"), "Supervisor": {"Pid": gone.pid, "Start": 1}},
    }  # fmt: skip
    store.instances().insert(rec["InstanceId"], rec)
    (got,) = describe.describe_instances()["Reservations"][0]["Instances"]
    assert got["State"] == {"Code": 80, "Name": "stopped"}
    assert got["StateReason"]["Code"] == "Server.InternalError"
    assert f"pid {gone.pid}" in got["StateReason"]["Message"]
    assert got["amilab:SshPort"] == 22 and "Amilab" not in got

    def other_port(r: dict) -> None:  # the host's sshd held port 22 of every address
        r["Amilab"]["SshPort"] = 2222

    store.instances().update(rec["InstanceId"], other_port)
    (got,) = describe.describe_instances()["Reservations"][0]["Instances"]
    assert got["amilab:SshPort"] == 2222
    with pytest.raises(BadInput, match="^InvalidInstanceID.NotFound"):
        stop.terminate_instances(["i-0000000000000000f"])
    with pytest.raises(BadInput, match="^IncorrectInstanceState"):
        launch.reboot_instances([rec["InstanceId"]])


def test_same_process_tells_a_reused_pid() -> None:
    import os

    me = os.getpid()
    start = store.process_start(me)
    assert store.same_process(me, start)
    assert not store.same_process(me, (start or 0) + 1)


def test_metadata_names_the_launch_mapping_and_gates_the_spot_notice() -> None:
    import time

    from harness.instances.supervisor import instance_metadata

    now = time.time()
    rec = {
        "InstanceId": "i-0123456789abcdef0", "InstanceType": "m1.small", "KeyName": "k1",
        "Placement": {"AvailabilityZone": "us-east-1b"}, "RootDeviceName": "/dev/sda1",
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeId": "vol-1"}},
                                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeId": "vol-2"}}],
        "Amilab": {"PublicKey": "ssh-ed25519 AAAA k1", "Launch": {"Metadata": {}},
                   "InstanceStoreDevices": ["/dev/sdb"],
                   "Spot": {"Action": "stop", "At": now + 60, "NoticeAt": now + 30,
                            "Time": "2030-01-01T00:00:00Z"}},
    }  # fmt: skip
    md = instance_metadata(rec)
    assert md["block_device_mapping"] == {
        "ami": "/dev/sda1", "root": "/dev/sda1", "ebs1": "/dev/sdf", "ephemeral0": "/dev/sdb"
    }  # fmt: skip
    assert md["key_name"] == "k1" and md["availability_zone"] == "us-east-1b"
    assert "spot" not in md.get("extra", {})  # not announced yet
    rec["Amilab"]["Spot"]["NoticeAt"] = now - 1
    assert instance_metadata(rec)["extra"]["spot"]["Action"] == "stop"


def test_scheduled_events_are_served_and_described(amilab_home: Path) -> None:
    import time

    from harness.instances import events
    from harness.instances.supervisor import instance_metadata

    ev = events.new_event("instance-stop", time.time() + 60)
    rec = {
        "InstanceId": "i-0123456789abcdef1", "ImageId": "ami-0123456789abcdef0",
        "InstanceType": "m1.small", "State": store.state("stopped"), "Tags": [],
        "Placement": {"AvailabilityZone": "us-east-1a"}, "RootDeviceName": "/dev/sda1",
        "BlockDeviceMappings": [],
        "Amilab": {"PublicKey": "ssh-ed25519 AAAA k1", "Launch": {"Metadata": {}},
                   "Dir": str(amilab_home / "y"), "Events": [ev]},
    }  # fmt: skip
    assert instance_metadata(rec)["extra"]["events"] == [ev]
    store.instances().insert(rec["InstanceId"], rec)
    assert describe.describe_instance_status()["InstanceStatuses"] == []  # not running
    (st,) = describe.describe_instance_status(include_all=True)["InstanceStatuses"]
    assert [e["InstanceEventId"] for e in st["Events"]] == [ev["EventId"]]
    with pytest.raises(BadInput, match="^IncorrectInstanceState"):
        stop.schedule_instance_event(rec["InstanceId"], "instance-reboot", time.time() + 9)
    moved = stop.modify_instance_event_start_time(
        rec["InstanceId"], ev["EventId"], time.time() + 120
    )
    assert moved["Event"]["NotBefore"] != events.api_shape(ev)["NotBefore"]
    with pytest.raises(BadInput, match="^InvalidInstanceEventID.NotFound"):
        stop.modify_instance_event_start_time(rec["InstanceId"], "instance-event-x", 0)


def test_key_pairs_are_per_account_and_old_rows_are_the_local_accounts(
    amilab_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.images.shapes import acting_as

    monkeypatch.setenv("AMILAB_ACCOUNT_ID", "333333333333")
    # a row as written before accounts were kept: keyed by name, no owner
    store.key_pairs().insert("old", {"KeyPairId": "key-0123456789abcdef0", "KeyName": "old",
                                     "KeyFingerprint": "SHA256:x", "KeyType": "rsa",
                                     "Tags": [], "PublicKey": "ssh-rsa AAAA old"})  # fmt: skip
    keypairs.create_key_pair("k1")
    with acting_as("444444444444"):
        assert keypairs.describe_key_pairs() == []
        with pytest.raises(BadInput, match="^InvalidKeyPair.NotFound"):
            keypairs.find_key_pair("old")
        keypairs.create_key_pair("old")  # the name is free in this account
        assert not keypairs.delete_key_pair("k1")
        assert [r["KeyName"] for r in keypairs.describe_key_pairs()] == ["old"]
    with acting_as("333333333333"):  # the local account, as the CLI is
        assert [r["KeyName"] for r in keypairs.describe_key_pairs()] == ["old", "k1"]
    assert keypairs.find_key_pair("old")["PublicKey"] == "ssh-rsa AAAA old"
    with pytest.raises(BadInput, match="^InvalidKeyPair.Duplicate"):
        keypairs.create_key_pair("old")
    assert keypairs.delete_key_pair("old") and not keypairs.delete_key_pair("old")
    with acting_as("444444444444"):
        assert [r["KeyName"] for r in keypairs.describe_key_pairs()] == ["old"]


def test_key_pair_tags_from_the_cli(amilab_home: Path, tmp_path: Path) -> None:
    import json

    from tests.conftest import run_amilab

    env = {"AMILAB_HOME": str(amilab_home)}
    made = run_amilab("create-key-pair", "--key-name", "k1", "--tag", "team=kernel", "--tag",
                      "Name", "--json", env=env, check=True)  # fmt: skip
    assert json.loads(made.stdout)["Tags"] == [
        {"Key": "Name", "Value": ""}, {"Key": "team", "Value": "kernel"}
    ]  # fmt: skip
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    bad = run_amilab("import-key-pair", "--key-name", "k2", "--public-key-material",
                     f"{key}.pub", "--tag", "aws:x=1", env=env)  # fmt: skip
    assert bad.returncode == 2 and "aws: prefix is reserved" in bad.stderr
    assert "Traceback" not in bad.stderr and "k2" not in str(store.key_pairs().list())
    listed = run_amilab("describe-key-pairs", "--json", env=env, check=True)
    assert [k["Tags"] for k in json.loads(listed.stdout)["KeyPairs"]] == [
        [{"Key": "Name", "Value": ""}, {"Key": "team", "Value": "kernel"}]
    ]
