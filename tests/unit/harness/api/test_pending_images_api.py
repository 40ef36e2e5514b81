"""CopyImage answers with the copy's ID at once while the server reads the source's disk
(EC2's pending AMI), which ends available (boto3's image_available waiter returns) or failed
with a StateReason (the waiter stops on it); CreateTags past EC2's 50 tags per resource is
TagLimitExceeded with HTTP 400 and adds none of the request's tags."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, WaiterError

from builder.images.registry import Registry
from builder.images.shapes import acting_as
from tests.unit.builder.images.test_lifecycle import register_fake
from tests.unit.harness.api.conftest import A

FAST = {"Delay": 1, "MaxAttempts": 30}


@pytest.fixture
def fake(api: dict) -> dict:
    with acting_as(A.account_id):
        return register_fake(api["home"])


def _error(call: object) -> tuple[str, int]:
    with pytest.raises(ClientError) as e:
        call()  # type: ignore[operator]
    resp = e.value.response
    return resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"]


def test_copy_image_is_pending_then_available(api: dict, fake: dict) -> None:
    a = api["client"](A)
    copy = a.copy_image(SourceImageId=fake["ami"].image_id, SourceRegion="us-east-1",
                        Name="copied")["ImageId"]  # fmt: skip
    (shown,) = a.describe_images(ImageIds=[copy])["Images"]
    assert shown["State"] in ("pending", "available") and shown["Name"] == "copied"
    a.get_waiter("image_available").wait(ImageIds=[copy], WaiterConfig=FAST)
    (done,) = a.describe_images(ImageIds=[copy])["Images"]
    assert done["State"] == "available" and "StateReason" not in done


def test_copy_of_a_corrupt_disk_answers_then_fails(api: dict, fake: dict) -> None:
    with open(fake["disk"], "r+b") as f:
        f.seek(4096)
        f.write(b"changed behind the registry's back")
    a = api["client"](A)
    # the reply comes before the disk is read: a copy made inside the call would be refused
    copy = a.copy_image(SourceImageId=fake["ami"].image_id, SourceRegion="us-east-1",
                        Name="from-a-bad-disk")["ImageId"]  # fmt: skip
    with pytest.raises(WaiterError, match="failure state"):
        a.get_waiter("image_available").wait(ImageIds=[copy], WaiterConfig=FAST)
    (failed,) = a.describe_images(ImageIds=[copy])["Images"]
    assert failed["State"] == "failed"
    assert failed["StateReason"]["Code"] == "Server.InternalError"
    assert "does not match its digest" in failed["StateReason"]["Message"]


def test_fifty_tags_per_resource_then_tag_limit_exceeded(api: dict, fake: dict) -> None:
    a = api["client"](A)
    ami = fake["ami"].image_id
    vol = a.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    a.create_tags(Resources=[vol], Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    a.create_tags(Resources=[vol], Tags=[{"Key": "k7", "Value": "new"}])  # a new value: 50
    # the image (one tag) could take it; the volume cannot: neither gets it
    assert _error(lambda: a.create_tags(Resources=[ami, vol], Tags=[{"Key": "x", "Value": ""}])
                  ) == ("TagLimitExceeded", 400)  # fmt: skip
    assert Registry().get(ami).tags == {"Team": "qa"}
    (v,) = a.describe_volumes(VolumeIds=[vol])["Volumes"]
    assert len(v["Tags"]) == 50 and {"Key": "k7", "Value": "new"} in v["Tags"]
    too_many = [{"Key": f"t{i}", "Value": "v"} for i in range(51)]
    assert _error(lambda: a.create_tags(Resources=[ami], Tags=too_many)) == (
        "TagLimitExceeded", 400)  # fmt: skip
    assert Registry().get(ami).tags == {"Team": "qa"}
    # a create request's tags: refused before the volume is made
    spec = [{"ResourceType": "volume", "Tags": too_many}]
    made = lambda: a.create_volume(AvailabilityZone="us-east-1a", Size=1, TagSpecifications=spec)  # noqa: E731
    assert _error(made) == ("TagLimitExceeded", 400)
    assert [x["VolumeId"] for x in a.describe_volumes()["Volumes"]] == [vol]
