"""copy-image reads the source's disk before a copy is available (a corrupt source gives no
copy), a pending copy (the API's) ends available or failed with EC2's StateReason, and EC2's
50-tag limit per resource, applied to all of a request's images or none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import AmilabError, BadInput
from builder.images import lifecycle
from builder.images.registry import Registry
from builder.state import pending
from tests.conftest import run_amilab
from tests.unit.builder.images.test_lifecycle import register_fake


@pytest.fixture
def fake(amilab_home: Path) -> dict:
    return register_fake(amilab_home)


def _corrupt(disk: Path) -> None:
    with open(disk, "r+b") as f:
        f.seek(4096)
        f.write(b"not what was registered")


def test_a_pending_copy_is_pending_then_available(fake: dict) -> None:
    copy = lifecycle.copy_image(fake["ami"].image_id, "later", wait=False)
    assert Registry().get(copy.image_id).state == "pending"
    assert Registry().get(copy.image_id).extra["owner"] == pending.owner()
    # a pending image is not launched or copied yet
    with pytest.raises(BadInput, match="InvalidAMIID.Unavailable"):
        lifecycle.copy_image(copy.image_id, "of-a-pending-one")
    done = lifecycle.finish_copy(copy.image_id)
    assert done.state == "available" and "owner" not in done.extra
    assert Registry().get(copy.image_id).state == "available"
    assert done.digest == fake["ami"].digest


def test_a_copy_of_a_corrupt_disk_fails(fake: dict) -> None:
    _corrupt(fake["disk"])
    waited = run_amilab("copy-image", fake["ami"].image_id, "--name", "bad-copy")
    assert waited.returncode == 1, waited.stderr
    assert waited.stderr.count("\n") == 1 and "does not match its digest" in waited.stderr
    assert [r.name for r in Registry().list("machine")] == ["img"]  # nothing registered
    copy = lifecycle.copy_image(fake["ami"].image_id, "bad-copy", wait=False)
    with pytest.raises(AmilabError, match="does not match its digest"):
        lifecycle.finish_copy(copy.image_id)
    rec = Registry().get(copy.image_id)
    assert rec.state == "failed" and "owner" not in rec.extra
    described = rec.describe()
    assert described["State"] == "failed"
    assert described["StateReason"]["Code"] == "Server.InternalError"
    assert "does not match its digest" in described["StateReason"]["Message"]
    # a failed image keeps no name: the copy can be made again once the disk is right
    lifecycle.copy_image(fake["ami"].image_id, "bad-copy", wait=False)


def test_tags_stop_at_fifty_per_resource_for_all_images_or_none(fake: dict) -> None:
    ami = fake["ami"].image_id
    other = lifecycle.copy_image(ami, "other").image_id
    full = {f"k{i}": "v" for i in range(49)}  # with Team=qa: 50
    lifecycle.tag([ami], full)
    lifecycle.tag([ami], {"k0": "changed"})  # an existing key takes a new value: still 50
    with pytest.raises(BadInput, match=r"^TagLimitExceeded: .* would have 51"):
        lifecycle.tag([other, ami], {"new": "v"})
    assert Registry().get(other).tags == {}  # the first image of the request kept nothing
    assert len(Registry().get(ami).tags) == 50
    assert Registry().get(ami).tags["k0"] == "changed"
    res = run_amilab("tag", ami, "one=more", "--json")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "TagLimitExceeded" in res.stderr, res.stderr
    assert len(Registry().get(ami).tags) == 50
    many = [f"t{i}=v" for i in range(51)]
    res = run_amilab("tag", other, *many)
    assert res.returncode == 2 and "TagLimitExceeded" in res.stderr
    shown = json.loads(run_amilab("images", "--type", "machine", "--json", check=True).stdout)
    tags = {i["ImageId"]: len(i.get("Tags") or []) for i in shown["Images"]}
    assert tags == {ami: 50, other: 0}
