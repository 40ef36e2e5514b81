"""What a launch writes into its instance's metadata: the AMI's record plus launch settings."""

from __future__ import annotations

import marshal
from pathlib import Path

from builder.registry import ImageRecord
from harness import accel
from harness.imds_cgi import answer, lookup
from harness.instance import InstanceDir
from harness.launch import Instance, LaunchOptions, WriteMetadata
from harness.machine import Disk
from harness.metadata import block_device_mapping
from harness.plan import LaunchPlan


def _record(image_id: str, image_type: str, **kw: object) -> ImageRecord:
    return ImageRecord(image_id=image_id, image_type=image_type, name=image_id, **kw)  # type: ignore[arg-type]


def test_block_device_mapping_names() -> None:
    mappings = [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}},
        {"DeviceName": "/dev/xvdf", "Ebs": {"VolumeSize": 1}},
        {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"},
        {"DeviceName": "/dev/sdc", "VirtualName": "swap"},
        {"DeviceName": "/dev/sdd", "NoDevice": ""},
    ]
    assert block_device_mapping("/dev/xvda", mappings) == {
        "ami": "/dev/xvda",
        "root": "/dev/xvda",
        "ebs1": "/dev/xvdf",
        "ephemeral0": "/dev/sdb",
        "swap": "/dev/sdc",
    }
    store = [{"DeviceName": "sda1", "VirtualName": "ami"}]
    assert block_device_mapping("/dev/sda1", store) == {"ami": "sda1", "root": "/dev/sda1"}


def test_write_metadata_from_record_and_launch(tmp_path: Path) -> None:
    ami = _record(
        "ami-0123456789abcdef0",
        "machine",
        root_device_name="/dev/sda1",
        root_device_type="instance-store",
        block_device_mappings=[{"DeviceName": "sda1", "VirtualName": "ami"}],
        image_location="amilab-bundles/debian/image.manifest.xml",
    )
    plan = LaunchPlan(
        image=ami,
        profile="paravirtual",
        disk=Disk(tmp_path / "disk.raw", "raw"),
        kernel=_record("aki-0123456789abcdef0", "kernel"),
    )
    options = LaunchOptions(
        accelerator=accel.Accelerator("tcg", "test"),
        metadata={"user_data": b"#!/bin/sh\necho hi\n", "http_tokens": "required"},
    )
    inst = Instance(plan, options)
    inst.dir = InstanceDir("i-0123456789abcdef0", tmp_path)
    inst.public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample x"
    WriteMetadata().run(inst)
    tree = marshal.loads(inst.dir.metadata_doc.read_bytes())
    assert answer(b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n", tree).startswith(b"HTTP/1.1 401")
    assert lookup(tree, "/latest/meta-data/kernel-id")[1] == "aki-0123456789abcdef0"
    assert lookup(tree, "/latest/meta-data/block-device-mapping/ami")[1] == "sda1"
    assert lookup(tree, "/latest/meta-data/ami-manifest-path")[1].endswith("manifest.xml")
    assert lookup(tree, "/latest/user-data")[1] == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "imds_cgi.py").exists()
