"""The API server through boto3 (real SigV4, real XML) with no guest: accounts, errors,
records (key pairs, security groups, the default VPC), and what the protocol rejects."""

from __future__ import annotations

import http.client
import sqlite3
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.unit.harness.api.conftest import B


def error_of(call: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as info:
        call()
    resp = info.value.response
    return resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"]


def test_caller_identity_is_the_signers_account(api: dict) -> None:
    assert api["client"](service="sts").get_caller_identity()["Account"] == "111111111111"
    assert api["client"](B, service="sts").get_caller_identity()["Account"] == "222222222222"


def test_a_wrong_secret_is_auth_failure_and_changes_nothing(api: dict) -> None:
    bad = api["client"](secret="not-the-secret")
    assert error_of(lambda: bad.create_key_pair(KeyName="k")) == ("AuthFailure", 400)
    assert api["client"]().describe_key_pairs()["KeyPairs"] == []


def test_unknown_ids_and_malformed_ids_get_ec2_codes(api: dict) -> None:
    ec2 = api["client"]()
    assert error_of(lambda: ec2.describe_images(ImageIds=["ami-0123456789abcdef0"])) == (
        "InvalidAMIID.NotFound", 400)  # fmt: skip
    assert error_of(lambda: ec2.describe_images(ImageIds=["nope"]))[0] == "InvalidAMIID.Malformed"
    run = lambda: ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)  # noqa: E731
    assert error_of(run)[0] == "InvalidAMIID.NotFound"
    assert error_of(lambda: ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"]))[0] == (
        "InvalidInstanceID.NotFound")  # fmt: skip
    assert error_of(lambda: ec2.stop_instances(InstanceIds=["x"]))[0] == (
        "InvalidInstanceID.Malformed")  # fmt: skip
    assert error_of(lambda: ec2.delete_volume(VolumeId="vol-0123456789abcdef0"))[0] == (
        "InvalidVolume.NotFound")  # fmt: skip
    assert error_of(lambda: ec2.describe_snapshots(SnapshotIds=["snap-0123456789abcdef0"]))[0] == (
        "InvalidSnapshot.NotFound")  # fmt: skip


def test_key_pairs_security_groups_tags_and_the_default_vpc(api: dict) -> None:
    ec2 = api["client"]()
    made = ec2.create_key_pair(KeyName="k1", KeyType="ed25519")
    assert made["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert error_of(lambda: ec2.create_key_pair(KeyName="k1"))[0] == "InvalidKeyPair.Duplicate"
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["k1"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
    assert len(subnets["Subnets"]) == 3
    gid = ec2.create_security_group(GroupName="web", Description="w")["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=gid,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    ec2.create_tags(Resources=[gid], Tags=[{"Key": "role", "Value": "web"}])
    (g,) = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    assert g["IpPermissions"][0]["FromPort"] == 22 and g["Tags"] == [
        {"Key": "role", "Value": "web"}
    ]
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [gid]}])["Tags"]
    assert tags == [{"ResourceId": gid, "ResourceType": "security-group", "Key": "role",
                     "Value": "web"}]  # fmt: skip
    # another account sees its own default group, not this one
    other = api["client"](B)
    assert error_of(lambda: other.describe_security_groups(GroupIds=[gid]))[0] == (
        "InvalidGroup.NotFound")  # fmt: skip
    ec2.delete_security_group(GroupId=gid)
    names = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert names == ["default"]
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    assert [z["ZoneName"] for z in zones] == ["us-east-1a", "us-east-1b", "us-east-1c"]
    (t,) = ec2.describe_instance_types(InstanceTypes=["t3.micro"])["InstanceTypes"]
    assert t["VCpuInfo"]["DefaultVCpus"] == 2 and t["Hypervisor"] == "nitro"


def _raw(api: dict, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host = api["url"].removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request("POST", "/", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})  # fmt: skip
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_unsigned_oversized_and_malformed_requests_are_400s(api: dict) -> None:
    status, body = _raw(api, b"Action=DescribeImages&Version=2016-11-15")
    assert status == 400 and b"<Code>AuthFailure</Code>" in body
    assert b"<Response" in body and b"<RequestID>" in body
    status, body = _raw(api, b"x", {"Content-Length": str(64 << 20)})
    assert status == 400 and b"RequestEntityTooLarge" in body


def test_an_unknown_action_and_bad_parameters_get_ec2_codes(api: dict) -> None:
    ec2 = api["client"]()
    # botocore validates client-side; the server's own checks are what the raw form reaches
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tests.unit.harness.api.conftest import A

    def signed(form: str) -> tuple[int, bytes]:
        req = AWSRequest(
            "POST",
            api["url"] + "/",
            data=form.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        SigV4Auth(Credentials(A.access_key_id, A.secret_access_key), "ec2", "us-east-1").add_auth(
            req
        )
        return _raw(api, form.encode(), dict(req.headers.items()))

    status, body = signed("Action=LaunchRockets&Version=2016-11-15")
    assert status == 400 and b"<Code>InvalidAction</Code>" in body
    status, body = signed("Action=RunInstances&Version=2016-11-15&ImageId=ami-0123456789abcdef0")
    assert status == 400 and b"<Code>MissingParameter</Code>" in body
    status, body = signed("Action=RunInstances&Version=2016-11-15&MinCount=x&MaxCount=1")
    assert status == 400 and b"<Code>InvalidParameterValue</Code>" in body
    status, body = signed("Action=DescribeImages&Version=2016-11-15&%zz")
    assert status == 400
    status, body = signed("Action=DescribeImages&Version=2016-11-15")
    assert status == 200 and b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"' in body
    assert ec2.describe_images()["Images"] == []


def test_nothing_failed_is_written(api: dict) -> None:
    ec2 = api["client"]()
    before = _dump(api)
    for call in (
        lambda: ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1),
        lambda: ec2.create_volume(AvailabilityZone="mars-1a", Size=1),
        lambda: ec2.create_tags(
            Resources=["i-0123456789abcdef0"], Tags=[{"Key": "a", "Value": "b"}]
        ),
        lambda: ec2.attach_volume(
            VolumeId="vol-0123456789abcdef0", InstanceId="i-0123456789abcdef0", Device="/dev/sdf"
        ),
    ):
        code, status = error_of(call)
        assert status == 400, code
    assert _dump(api) == before


def _dump(api: dict) -> list[str]:
    """The registry's rows (a lookup may create an empty table; that is not a change)."""
    path = api["home"] / "registry.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return [line for line in db.iterdump() if line.startswith("INSERT")]


def test_scheduled_events_in_describe_instance_status_and_moved(api: dict) -> None:
    import time as _time

    from harness.instances import events, store

    ev = events.new_event("system-reboot", _time.time() + 3600)
    rec = {
        "InstanceId": "i-0123456789abcdef7", "ImageId": "ami-0123456789abcdef0",
        "InstanceType": "m1.small", "State": store.state("stopped"), "Tags": [],
        "Placement": {"AvailabilityZone": "us-east-1a"}, "RootDeviceName": "/dev/sda1",
        "BlockDeviceMappings": [],
        "Amilab": {"Dir": str(api["home"] / "z"), "OwnerId": "111111111111", "Events": [ev]},
    }  # fmt: skip
    store.instances().insert(rec["InstanceId"], rec)
    ec2 = api["client"]()
    (st,) = ec2.describe_instance_status(IncludeAllInstances=True)["InstanceStatuses"]
    (got,) = st["Events"]
    assert got["InstanceEventId"] == ev["EventId"] and got["Code"] == "system-reboot"
    assert got["NotBefore"].timestamp() == ev["NotBefore"]
    new = int(_time.time()) + 600
    moved = ec2.modify_instance_event_start_time(
        InstanceId=rec["InstanceId"], InstanceEventId=ev["EventId"], NotBefore=new
    )["Event"]
    assert moved["NotBefore"].timestamp() == new
    code, status = error_of(
        lambda: ec2.modify_instance_event_start_time(
            InstanceId=rec["InstanceId"], InstanceEventId="instance-event-0", NotBefore=new
        )
    )
    assert (code, status) == ("InvalidInstanceEventID.NotFound", 400)


def test_a_dry_run_is_refused_with_dry_run_operation_and_changes_nothing(api: dict) -> None:
    ec2 = api["client"]()
    before = _dump(api)
    for call in (
        lambda: ec2.run_instances(
            ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1, DryRun=True
        ),
        lambda: ec2.create_key_pair(KeyName="dry", DryRun=True),
        lambda: ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, DryRun=True),
        lambda: ec2.describe_images(DryRun=True),
    ):
        assert error_of(call) == ("DryRunOperation", 412)
    assert _dump(api) == before
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert ec2.describe_volumes()["Volumes"] == []
    # DryRun=False is an ordinary request
    ec2.create_key_pair(KeyName="real", DryRun=False)
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == ["real"]


def test_key_pairs_take_tags_as_the_other_resources_do(api: dict) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ec2 = api["client"]()
    spec = [{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "kernel"}]}]
    made = ec2.create_key_pair(KeyName="k1", KeyType="ed25519", TagSpecifications=spec)
    assert made["Tags"] == [{"Key": "team", "Value": "kernel"}]
    public = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    imported = ec2.import_key_pair(KeyName="k2", PublicKeyMaterial=public, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "not", "Value": "mine"}]}])  # fmt: skip
    assert imported.get("Tags", []) == []  # a spec for another resource type is not its
    kid = imported["KeyPairId"]
    ec2.create_tags(Resources=[kid], Tags=[{"Key": "Name", "Value": "laptop"}])
    pairs = ec2.describe_key_pairs(Filters=[{"Name": "tag:Name", "Values": ["lap*"]}])["KeyPairs"]
    assert [(k["KeyName"], k["Tags"]) for k in pairs] == [
        ("k2", [{"Key": "Name", "Value": "laptop"}])
    ]
    assert [k["KeyName"] for k in ec2.describe_key_pairs(
        Filters=[{"Name": "tag-key", "Values": ["team"]}])["KeyPairs"]] == ["k1"]  # fmt: skip
    tags = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["key-pair"]}])["Tags"]
    assert sorted((t["ResourceId"], t["Key"]) for t in tags) == sorted(
        [(made["KeyPairId"], "team"), (kid, "Name")]
    )
    ec2.delete_tags(Resources=[made["KeyPairId"]], Tags=[{"Key": "team"}])
    (k1,) = ec2.describe_key_pairs(KeyNames=["k1"])["KeyPairs"]
    assert k1.get("Tags", []) == []
    # another account can neither see nor tag them
    other = api["client"](B)
    assert (
        error_of(lambda: other.create_tags(Resources=[kid], Tags=[{"Key": "a", "Value": "b"}]))[0]
        == "InvalidKeyPair.NotFound"
    )
    assert other.describe_tags()["Tags"] == []
