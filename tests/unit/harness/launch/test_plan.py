"""From registry records to what a launch boots (kernel, ramdisk, command line, disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.images import factory
from builder.images.records import KernelSettings, LaunchSettings, RamdiskSettings
from builder.images.registry import Registry
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
    kernels = [
        factory.content_image(
            "0" * 16 + x, f"k-{x}", str(files[f"vmlinuz-{x}"]),
            KernelSettings(cmdline="console=ttyS0"), release=f"6.1.0-{x}",
        )  # fmt: skip
        for x in "ab"
    ]
    ramdisks = [
        factory.content_image(
            "0" * 16 + x, f"r-{x}", str(files[f"initrd-{x}"]),
            RamdiskSettings(kind="generated", built_for=f"aki-0000000000000000{x}"),
        )  # fmt: skip
        for x in "ab"
    ]
    pv = factory.machine_image(
        factory.Registration("pv", "paravirtual", "/dev/sda1", kernel_id="aki-0000000000000000a",
                             ramdisk_id="ari-0000000000000000a"),
        "0" * 64, LaunchSettings(root_label="cloudimg-rootfs", kernel_cmdline="quiet"),
        {"qcow2": str(qcow), "raw": str(disk)}, image_location=str(disk),
    )  # fmt: skip
    hvm = factory.machine_image(
        factory.Registration("hvm", "hvm", "/dev/xvda"), "1" * 64,
        LaunchSettings(kernel_release="6.1.0-a", boot="uefi"), {"raw": str(disk)},
    )  # fmt: skip
    reg.register([*kernels, *ramdisks, pv, hvm])
    return reg


def test_paravirtual_defaults(registry: Registry) -> None:
    plan = make_plan(registry.find("pv"), registry=registry)
    assert plan.profile == "paravirtual" and plan.virtualization == "paravirtual"
    assert plan.kernel_id == "aki-0000000000000000a"
    assert plan.ramdisk_id == "ari-0000000000000000a"
    assert plan.expected_release == "6.1.0-a"
    assert plan.cmdline == (
        "root=LABEL=cloudimg-rootfs console=ttyS0 quiet panic=-1 tsc=reliable"
        " cryptomgr.notests rcupdate.rcu_expedited=1 no_timer_check"
    )
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
    image.launch.partitioning, image.launch.root_partuuid = "gpt", "5eed1234-01"
    plan = make_plan(image, ramdisk_ref="none", registry=registry)
    assert plan.cmdline.startswith("root=PARTUUID=5eed1234-01 rootwait ")
