"""Images, snapshots, volumes and two accounts through the API, over small synthetic images
(no guest): who sees what, sharing, copies, RegisterImage from a snapshot, store/restore."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from builder.images.shapes import acting_as
from tests.unit.builder.images.test_lifecycle import register_fake
from tests.unit.harness.api.conftest import A, B


@pytest.fixture
def fake(api: dict) -> dict:
    with acting_as(A.account_id):
        return register_fake(api["home"])


def code(call: object) -> str:
    with pytest.raises(ClientError) as e:
        call()  # type: ignore[operator]
    return str(e.value.response["Error"]["Code"])


def test_sharing_copying_and_who_owns_what(api: dict, fake: dict) -> None:
    a, b = api["client"](A), api["client"](B)
    ami = fake["ami"].image_id
    mine = a.describe_images(Owners=["self"])["Images"]
    assert {i["ImageId"] for i in mine} == {ami, fake["aki"].image_id, fake["ari"].image_id}
    assert all(i["OwnerId"] == A.account_id for i in mine)
    assert b.describe_images()["Images"] == []
    assert code(lambda: b.describe_images(ImageIds=[ami])) == "InvalidAMIID.NotFound"
    assert code(lambda: b.copy_image(SourceImageId=ami, SourceRegion="us-east-1", Name="xyz")) == (
        "InvalidAMIID.NotFound")  # fmt: skip
    assert code(lambda: b.modify_image_attribute(ImageId=ami, LaunchPermission={
        "Add": [{"UserId": B.account_id}]})) == "InvalidAMIID.NotFound"  # fmt: skip
    a.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": B.account_id}]})
    assert [i["ImageId"] for i in b.describe_images(ExecutableUsers=["self"])["Images"]] == [ami]
    assert code(lambda: b.deregister_image(ImageId=ami)) == "AuthFailure"
    copy = b.copy_image(SourceImageId=ami, SourceRegion="us-east-1", Name="b-copy")["ImageId"]
    (c,) = b.describe_images(Owners=["self"])["Images"]
    assert (c["ImageId"], c["OwnerId"], c["Name"]) == (copy, B.account_id, "b-copy")
    assert copy not in {i["ImageId"] for i in a.describe_images()["Images"]}
    a.reset_image_attribute(ImageId=ami, Attribute="launchPermission")
    assert [i["ImageId"] for i in b.describe_images(ExecutableUsers=["self"])["Images"]] == [copy]
    a.modify_image_attribute(ImageId=ami, Description={"Value": "described"})
    got = a.describe_image_attribute(ImageId=ami, Attribute="description")
    assert got["Description"]["Value"] == "described"
    filtered = a.describe_images(
        Filters=[
            {"Name": "tag:Team", "Values": ["q*"]},
            {"Name": "image-type", "Values": ["machine"]},
        ]
    )
    assert [i["ImageId"] for i in filtered["Images"]] == [ami]


def test_snapshots_volumes_and_register_image_from_a_snapshot(api: dict, fake: dict) -> None:
    a, b = api["client"](A), api["client"](B)
    image = fake["ami"]
    snap_id = image.block_device_mappings[0]["Ebs"]["SnapshotId"]
    (snap,) = a.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"]
    assert snap["State"] == "completed" and snap["OwnerId"] == A.account_id
    assert code(lambda: a.delete_snapshot(SnapshotId=snap_id)) == "InvalidSnapshot.InUse"
    assert code(lambda: b.describe_snapshots(SnapshotIds=[snap_id])) == "InvalidSnapshot.NotFound"
    a.modify_snapshot_attribute(SnapshotId=snap_id, Attribute="createVolumePermission",
                                OperationType="add", UserIds=[B.account_id])  # fmt: skip
    assert [s["SnapshotId"] for s in b.describe_snapshots(
        RestorableByUserIds=["self"])["Snapshots"]] == [snap_id]  # fmt: skip
    vol = b.create_volume(AvailabilityZone="us-east-1a", SnapshotId=snap_id)
    assert vol["State"] == "available" and vol["SnapshotId"] == snap_id
    assert a.describe_volumes()["Volumes"] == []
    assert [v["VolumeId"] for v in b.describe_volumes()["Volumes"]] == [vol["VolumeId"]]
    new = a.register_image(
        Name="from-a-snapshot", RootDeviceName="/dev/sda1", VirtualizationType="paravirtual",
        KernelId=fake["aki"].image_id, RamdiskId=fake["ari"].image_id,
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap_id}}],
    )["ImageId"]  # fmt: skip
    (r,) = a.describe_images(ImageIds=[new])["Images"]
    assert r["KernelId"] == fake["aki"].image_id and r["RamdiskId"] == fake["ari"].image_id
    assert r["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snap_id
    assert r["RootDeviceType"] == "ebs" and r["State"] == "available"
    assert code(lambda: a.register_image(Name="from-a-snapshot", RootDeviceName="/dev/sda1",
                BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap_id}}],
                )) in ("InvalidAMIName.Duplicate", "InvalidParameterValue")  # fmt: skip


def test_store_and_restore_tasks(api: dict, fake: dict) -> None:
    a = api["client"](A)
    ami = fake["ami"].image_id
    key = a.create_store_image_task(ImageId=ami, Bucket="amis")["ObjectKey"]
    assert key == f"{ami}.bin"
    deadline = time.monotonic() + 60
    while True:
        (t,) = a.describe_store_image_tasks(ImageIds=[ami])["StoreImageTaskResults"]
        if t["StoreTaskState"] != "InProgress" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (t["StoreTaskState"], t["ProgressPercentage"], t["Bucket"]) == ("Completed", 100, "amis")
    new = a.create_restore_image_task(Bucket="amis", ObjectKey=key, Name="restored")["ImageId"]
    (r,) = a.describe_images(ImageIds=[new])["Images"]
    assert r["Name"] == "restored" and new != ami and r["OwnerId"] == A.account_id
    assert (
        code(lambda: a.create_restore_image_task(Bucket="amis", ObjectKey=key, Name="restored"))
        == "InvalidAMIName.Duplicate"
    )
    assert code(lambda: a.create_restore_image_task(Bucket="amis", ObjectKey="nope.bin")) != (
        "InternalError")  # fmt: skip


def test_key_pairs_belong_to_the_signers_account(api: dict, fake: dict) -> None:
    a, b = api["client"](A), api["client"](B)
    made_a = a.create_key_pair(KeyName="shared-name", KeyType="ed25519")
    made_b = b.create_key_pair(KeyName="shared-name", KeyType="ed25519")  # no Duplicate
    assert made_a["KeyFingerprint"] != made_b["KeyFingerprint"]
    (pub,) = a.describe_key_pairs(KeyNames=["shared-name"], IncludePublicKey=True)["KeyPairs"]
    b.import_key_pair(KeyName="only-b", PublicKeyMaterial=pub["PublicKey"].encode())
    ((ka,), kb) = (a.describe_key_pairs()["KeyPairs"], b.describe_key_pairs()["KeyPairs"])
    assert (ka["KeyName"], ka["KeyPairId"]) == ("shared-name", made_a["KeyPairId"])
    assert [k["KeyName"] for k in kb] == ["shared-name", "only-b"]
    assert code(lambda: a.describe_key_pairs(KeyNames=["only-b"])) == "InvalidKeyPair.NotFound"
    assert code(lambda: a.describe_key_pairs(KeyPairIds=[made_b["KeyPairId"]])) == (
        "InvalidKeyPair.NotFound")  # fmt: skip
    # RunInstances resolves KeyName in the signer's account (refused before anything boots)
    run = lambda: a.run_instances(ImageId=fake["ami"].image_id, MinCount=1, MaxCount=1,  # noqa: E731
                                  KeyName="only-b")  # fmt: skip
    assert code(run) == "InvalidKeyPair.NotFound"
    # deleting in one account leaves the other's key of the same name, by name or by ID
    a.delete_key_pair(KeyPairId=made_b["KeyPairId"])
    a.delete_key_pair(KeyName="only-b")
    assert [k["KeyName"] for k in b.describe_key_pairs()["KeyPairs"]] == ["shared-name", "only-b"]
    a.delete_key_pair(KeyName="shared-name")
    assert a.describe_key_pairs()["KeyPairs"] == []
    assert [k["KeyPairId"] for k in b.describe_key_pairs(KeyNames=["shared-name"])["KeyPairs"]] == [
        made_b["KeyPairId"]]  # fmt: skip
    assert all("OwnerId" not in k and "PublicKey" not in k for k in kb)
