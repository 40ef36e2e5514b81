"""Image records: typed settings, registry rows of both shapes, the one record factory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.errors import BadInput
from builder.ids import make_id, registration_id
from builder.images import factory
from builder.images.records import (
    ImageRecord,
    KernelSettings,
    LaunchSettings,
    Partition,
    RamdiskSettings,
    record_from_dict,
    record_to_dict,
)
from builder.images.registry import Registry
from builder.images.shapes import root_ebs_mapping

DIGEST = "ab" * 32


def _machine(root: str = "/dev/xvda", **kw: Any) -> ImageRecord:
    parts = {"esp": Partition(1 << 20, 100 << 20), "root": Partition(101 << 20, 1 << 30)}
    launch = LaunchSettings(3 << 30, "gpt", parts, 101 << 20, "cloudimg-rootfs", "u-1", "p-1",
                            "hybrid", "6.1.0-x", kernel_cmdline="quiet")  # fmt: skip
    reg = factory.Registration(
        "web", "paravirtual", root, kernel_id="aki-00000000000000001",
        ramdisk_id="ari-00000000000000001",
    )  # fmt: skip
    locations = {"raw": "/a/disk.raw", "qcow2": "/a/disk.qcow2"}
    kw = {"description": "d", "extra": {"recipe": {"name": "x"}}, **kw}
    return factory.machine_image(reg, DIGEST, launch, locations, **kw)


# ----------------------------------------------------------------------- factory


def test_a_built_image_id_derives_from_digest_and_registration() -> None:
    rec = _machine()
    registered = {
        "name": "web",
        "architecture": "x86_64",
        "virtualization": "paravirtual",
        "kernel_id": "aki-00000000000000001",
        "ramdisk_id": "ari-00000000000000001",
        "root_device_name": "/dev/xvda",
    }
    assert rec.image_id == registration_id("ami", DIGEST, registered)
    assert _machine().image_id == rec.image_id  # the same inputs, the same ID
    assert _machine(description="other").image_id == rec.image_id  # not a registration key
    assert _machine("/dev/sda1").image_id != rec.image_id
    imported = _machine(id_extra={"imported": True})
    assert imported.image_id == registration_id(
        "ami", DIGEST, {**registered, "imported": True}
    )
    assert _machine(fresh=True).image_id != _machine(fresh=True).image_id


def test_machine_image_fields() -> None:
    rec = _machine()
    assert rec.image_type == "machine" and rec.root_device_type == "ebs"
    assert rec.image_location == "/a/disk.raw"  # the first stored format
    assert rec.block_device_mappings == root_ebs_mapping("/dev/xvda", DIGEST, 3 << 30)
    assert rec.digest == DIGEST and rec.locations["qcow2"] == "/a/disk.qcow2"
    bundled = _machine(instance_store=True, image_location="/b/m.xml")
    assert bundled.block_device_mappings == [{"DeviceName": "/dev/xvda", "VirtualName": "ami"}]
    assert bundled.image_location == "/b/m.xml"


def test_kernel_and_ramdisk_ids_are_their_bytes() -> None:
    aki = factory.content_image(
        DIGEST, "k", "/k/vmlinuz", KernelSettings("debian-cloud", "linux-image", "console=hvc0"),
        release="6.1.0-x", version="6.1.1",
    )  # fmt: skip
    ari = factory.content_image(
        DIGEST, "r", "/k/initrd", RamdiskSettings("generated", aki.image_id), release="6.1.0-x"
    )
    assert aki.image_id == make_id("aki", DIGEST) and ari.image_id == make_id("ari", DIGEST)
    assert (aki.kernel_release, aki.package_version) == ("6.1.0-x", "6.1.1")
    assert ari.ramdisk_settings.built_for == aki.image_id and ari.kernel_release == "6.1.0-x"
    assert factory.new_image_id("kernel", DIGEST, {}) == aki.image_id


def test_reregistered_is_a_new_private_image_with_the_same_launch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMILAB_ACCOUNT_ID", "111122223333")
    src = _machine()
    src.owner_id, src.public, src.launch_permissions = "999988887777", True, ["123456789012"]
    src.tags = {"Team": "qa"}
    copy = factory.reregistered(
        src, "web-copy", {"copied_from": src.image_id}, tags={}, extra={"source_image_id": "x"}
    )
    assert copy.image_id != src.image_id and copy.name == "web-copy"
    assert copy.owner_id == "111122223333" and not copy.public and copy.launch_permissions == []
    assert copy.tags == {} and copy.launch == src.launch and copy.digest == src.digest
    assert copy.extra == {"recipe": {"name": "x"}, "source_image_id": "x"}
    assert copy.image_location == src.image_location and copy.creation_date == ""
    copy.launch.root_label = "changed"
    assert src.launch.root_label == "cloudimg-rootfs"  # not shared with the source
    restored = factory.reregistered(
        src, "web", {"restored_from": "k"}, digest=DIGEST, locations={"raw": "/s/d.raw"}
    )
    assert restored.tags == src.tags and restored.image_location == "/s/d.raw"
    assert restored.locations == {"raw": "/s/d.raw"}


# ------------------------------------------------------------------------- rows


def test_rows_round_trip_with_only_their_own_settings() -> None:
    aki = factory.content_image(DIGEST, "k", "/k", KernelSettings(pv_grub=True))
    ari = factory.content_image(DIGEST, "r", "/r", RamdiskSettings(kind="distro"))
    for rec, own in ((_machine(), "launch"), (aki, "kernel_settings"), (ari, "ramdisk_settings")):
        row = json.loads(json.dumps(record_to_dict(rec)))
        assert own in row
        assert not {"launch", "kernel_settings", "ramdisk_settings"} - {own} & set(row)
        assert record_from_dict(row) == rec


def test_an_old_row_lifts_what_a_launch_reads_out_of_extra() -> None:
    new = _machine()
    row = record_to_dict(new)
    launch = row.pop("launch")
    row["extra"] = {
        **row["extra"],
        **launch,
        "locations": row.pop("locations"),
        "disk_digest": row.pop("digest"),
        "logs": "/logs/web",
    }
    old = record_from_dict(row)
    assert old.launch == new.launch and old.locations == new.locations
    assert old.digest == DIGEST
    assert old.extra == {"recipe": {"name": "x"}, "logs": "/logs/web"}
    assert old.describe() == {**new.describe(), "CreationDate": old.creation_date}


def test_old_rows_of_every_kind() -> None:
    base = {"image_id": "aki-00000000000000001", "name": "k", "creation_date": "t"}
    kernel = record_from_dict({**base, "image_type": "kernel", "extra": {
        "definition": "pv-grub", "digest": DIGEST, "pv_grub": True}})  # fmt: skip
    assert kernel.kernel_settings == KernelSettings(definition="pv-grub", pv_grub=True)
    assert kernel.digest == DIGEST and kernel.extra == {}
    bundled = record_from_dict({**base, "image_type": "kernel", "extra": {
        "digest": DIGEST, "locations": {"raw": "/s/k"}, "bundle_user": "1"}})  # fmt: skip
    assert bundled.locations == {"raw": "/s/k"} and bundled.extra == {"bundle_user": "1"}
    assert bundled.describe()["Locations"] == {"raw": "/s/k"}
    ramdisk = record_from_dict({**base, "image_type": "ramdisk", "extra": {
        "kind": "generated", "kernel_id": "aki-1", "digest": DIGEST}})  # fmt: skip
    assert ramdisk.ramdisk_settings == RamdiskSettings("generated", "aki-1")
    imported = record_from_dict({**base, "image_type": "machine", "extra": {
        "imported": True, "boot": "uefi", "kernel_releases": ["6.1"], "root_uuid": None,
        "partitioning": {"table": "msdos", "parts": []}, "problems": []}})  # fmt: skip
    assert imported.launch == LaunchSettings(
        partitioning="mbr", boot="uefi", kernel_releases=["6.1"], imported=True
    )
    assert imported.extra == {"partitioning": {"table": "msdos", "parts": []}, "problems": []}
    assert imported.launch.expected_release == "6.1" and imported.launch.firmware == "uefi"
    bare = record_from_dict({**base, "image_type": "machine"})  # a row with no extra at all
    assert bare.launch == LaunchSettings() and bare.locations == {}


# --------------------------------------------------------------------- registry


def test_register_keeps_an_existing_id_and_register_new_refuses_a_taken_name(
    amilab_home: Path,
) -> None:
    registry = Registry()
    first = _machine()
    (stored,) = registry.register([first])
    assert stored.creation_date and stored.owner_id
    again = _machine(description="changed")
    assert registry.register([again])[0].description == "d"  # registered images never change
    with pytest.raises(BadInput, match="already in use"):
        registry.register_new(_machine(fresh=True))
    other = registry.register_new(factory.reregistered(stored, "web2", {"n": 1}))
    assert registry.find("web2") == other and registry.get(other.image_id) == other
