"""From registry records to what a launch boots (kernel, ramdisk, command line, disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.images.registry import ImageRecord, Registry
from harness.launch.plan import make_plan, sniff_format


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home"))
    reg = Registry()
    files = {n: tmp_path / n for n in ("vmlinuz-a", "vmlinuz-b", "initrd-a", "initrd-b")}
    for p in files.values():
        p.write_bytes(b"x")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 1024)
    qcow = tmp_path / "disk.qcow2"
    qcow.write_bytes(b"QFI\xfb" + b"\0" * 60)
    reg.register(
        [
            ImageRecord(
                "aki-0000000000000000a",
                "kernel",
                "k-a",
                kernel_release="6.1.0-a",
                image_location=str(files["vmlinuz-a"]),
                extra={"cmdline": "console=ttyS0"},
            ),
            ImageRecord(
                "aki-0000000000000000b",
                "kernel",
                "k-b",
                kernel_release="6.1.0-b",
                image_location=str(files["vmlinuz-b"]),
                extra={"cmdline": "console=ttyS0"},
            ),
            ImageRecord(
                "ari-0000000000000000a",
                "ramdisk",
                "r-a",
                image_location=str(files["initrd-a"]),
                extra={"kind": "generated", "kernel_id": "aki-0000000000000000a"},
            ),
            ImageRecord(
                "ari-0000000000000000b",
                "ramdisk",
                "r-b",
                image_location=str(files["initrd-b"]),
                extra={"kind": "generated", "kernel_id": "aki-0000000000000000b"},
            ),
            ImageRecord(
                "ami-0000000000000000a",
                "machine",
                "pv",
                virtualization_type="paravirtual",
                kernel_id="aki-0000000000000000a",
                ramdisk_id="ari-0000000000000000a",
                image_location=str(disk),
                extra={
                    "root_label": "cloudimg-rootfs",
                    "kernel_cmdline": "quiet",
                    "locations": {"qcow2": str(qcow), "raw": str(disk)},
                },
            ),
            ImageRecord(
                "ami-0000000000000000b",
                "machine",
                "hvm",
                virtualization_type="hvm",
                image_location=str(disk),
                extra={
                    "kernel_release": "6.1.0-a",
                    "boot": "uefi",
                    "locations": {"raw": str(disk)},
                },
            ),
        ]
    )
    return reg


def test_paravirtual_defaults(registry: Registry) -> None:
    plan = make_plan(registry.find("pv"), registry=registry)
    assert plan.profile == "paravirtual" and plan.virtualization == "paravirtual"
    assert plan.kernel_id == "aki-0000000000000000a"
    assert plan.ramdisk_id == "ari-0000000000000000a"
    assert plan.expected_release == "6.1.0-a"
    assert plan.cmdline == "root=LABEL=cloudimg-rootfs console=ttyS0 quiet panic=-1"
    assert plan.disk.format == "raw"  # raw preferred over the qcow2 listed first


def test_other_kernel_takes_its_own_ramdisk(registry: Registry) -> None:
    plan = make_plan(registry.find("pv"), kernel_ref="aki-0000000000000000b", registry=registry)
    assert plan.kernel_id == "aki-0000000000000000b" and plan.expected_release == "6.1.0-b"
    assert plan.ramdisk_id == "ari-0000000000000000b"
    assert plan.notes and "aki-0000000000000000b" in plan.notes[0]


def test_explicit_ramdisk_and_none(registry: Registry) -> None:
    image = registry.find("pv")
    plan = make_plan(
        image, kernel_ref="k-b", ramdisk_ref="ari-0000000000000000a", registry=registry
    )
    assert plan.ramdisk_id == "ari-0000000000000000a"
    assert make_plan(image, ramdisk_ref="none", registry=registry).ramdisk is None


def test_format_choice(registry: Registry) -> None:
    plan = make_plan(registry.find("pv"), disk_format="qcow2", registry=registry)
    assert plan.disk.format == "qcow2" and plan.disk.path.name == "disk.qcow2"
    with pytest.raises(BadInput, match="no vmdk disk"):
        make_plan(registry.find("pv"), disk_format="vmdk", registry=registry)


def test_hvm(registry: Registry) -> None:
    plan = make_plan(registry.find("hvm"), registry=registry)
    assert plan.profile == "hvm-uefi" and plan.kernel is None and plan.cmdline == ""
    assert plan.expected_release == "6.1.0-a"
    assert make_plan(registry.find("hvm"), firmware="bios", registry=registry).profile == "hvm-bios"
    with pytest.raises(BadInput, match="paravirtual"):
        make_plan(registry.find("hvm"), kernel_ref="k-a", registry=registry)


def test_bad_references(registry: Registry) -> None:
    with pytest.raises(BadInput):
        make_plan(registry.find("pv"), kernel_ref="aki-fffffffffffffffff", registry=registry)
    with pytest.raises(BadInput, match="not a kernel"):
        make_plan(registry.find("pv"), kernel_ref="ari-0000000000000000a", registry=registry)
    with pytest.raises(BadInput, match="not a machine image"):
        make_plan(registry.find("k-a"), registry=registry)


def test_missing_disk(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "disk.raw").unlink()
    with pytest.raises(BadInput, match="missing"):
        make_plan(registry.find("pv"), registry=registry)


def test_sniff(tmp_path: Path) -> None:
    for head, fmt in (
        (b"QFI\xfb", "qcow2"),
        (b"KDMV", "vmdk"),
        (b"# Disk DescriptorFile", "vmdk"),
        (b"\0\0\0\0", "raw"),
    ):
        p = tmp_path / "d"
        p.write_bytes(head + b"\0" * 64)
        assert sniff_format(p) == fmt


def test_no_ramdisk_lets_the_kernel_find_the_root(registry: Registry) -> None:
    image = registry.find("pv")
    plan = make_plan(image, ramdisk_ref="none", disk_bus="nvme", registry=registry)
    assert plan.cmdline.startswith("root=/dev/nvme0n1 rootwait ")
    plan = make_plan(image, ramdisk_ref="none", registry=registry)
    assert plan.cmdline.startswith("root=/dev/vda rootwait ")
    image.extra.update(partitioning="gpt", root_partuuid="5eed1234-01")
    plan = make_plan(image, ramdisk_ref="none", registry=registry)
    assert plan.cmdline.startswith("root=PARTUUID=5eed1234-01 rootwait ")
