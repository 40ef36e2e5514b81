"""An instance keeps the image records it was launched with: after a deregister its
operations still find its AMI (and only by its ID, and only as the right kind)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.images import factory, lifecycle
from builder.images.records import LaunchSettings
from builder.images.registry import Registry
from harness.instances import launch_images


def _ami(home: Path) -> str:
    home.mkdir(parents=True, exist_ok=True)
    disk = home / "disk.raw"
    disk.write_bytes(b"d" * 4096)
    reg = factory.Registration("kept", "hvm", "/dev/xvda", "x86_64")
    rec = factory.machine_image(reg, "ef" * 32, LaunchSettings(), {"raw": str(disk)})
    return Registry().register([rec])[0].image_id


def test_a_deregistered_ami_is_found_through_the_instance_record(amilab_home: Path) -> None:
    ami = _ami(amilab_home)
    record = {"ImageId": ami, "Amilab": {
        launch_images.KEY: launch_images.kept(Registry().find(ami), None)}}  # fmt: skip
    lifecycle.deregister(ami)
    with pytest.raises(BadInput, match="no such"):
        Registry().find(ami, "machine")
    kept = launch_images.registry_for(record)
    assert kept.find(ami, "machine").image_id == ami
    assert kept.get(ami) is not None
    with pytest.raises(BadInput):  # kept as a machine image, not as a kernel
        kept.find(ami, "kernel")
    with pytest.raises(BadInput):  # by ID only: the name is free for others again
        kept.find("kept", "machine")


def test_an_instance_record_from_before_keeps_nothing(amilab_home: Path) -> None:
    ami = _ami(amilab_home)
    record = {"ImageId": ami, "Amilab": {}}
    assert launch_images.registry_for(record).find(ami).image_id == ami
    lifecycle.deregister(ami)
    with pytest.raises(BadInput):
        launch_images.registry_for(record).find(ami)
