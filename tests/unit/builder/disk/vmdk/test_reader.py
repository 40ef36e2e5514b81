"""The validating VMDK reader: every fixture, and data-bearing disks in every subformat,
read back bit-exact and identical to what qemu-img reads."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import pytest

from builder.disk.convert import convert
from builder.disk.vmdk import open_vmdk
from builder.disk.vmdk.rawio import write_raw
from builder.disk.vmdk.stream_writer import write_stream_optimized
from builder.ids import sparse_sha256
from tests.unit.builder.disk.vmdk.support import (
    DATA,
    QEMU_SUBFORMATS,
    make_raw,
    qemu_to_raw,
    qemu_vmdk,
    virtualbox_stream,
    vmfs_pair,
)

FIXTURE_FACTS = {
    "blank.vmdk": (512 << 20, "streamOptimized", "as VMware writes", "lsilogic"),
    "ubuntu.2.0-disk1.vmdk": (8 << 30, "streamOptimized", "as VirtualBox writes", "ide"),
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw(tmp_path_factory.mktemp("raw") / "disk.raw")


def test_fixture_list_is_complete() -> None:
    assert {p.name for p in DATA.glob("*.vmdk")} == set(FIXTURE_FACTS)


@pytest.mark.parametrize("name", sorted(FIXTURE_FACTS))
def test_fixture_read(name: str, tmp_path: Path) -> None:
    capacity, create_type, layout, adapter = FIXTURE_FACTS[name]
    with open_vmdk(DATA / name) as image:
        assert image.capacity == capacity
        assert image.create_type == create_type
        assert layout in image.layout
        assert image.adapter_type == adapter
        assert list(image.chunks()) == []  # no data
        assert image.verify() == 0
    ours = convert(DATA / name, tmp_path / "ours.raw").output
    theirs = qemu_to_raw(DATA / name, tmp_path / "qemu.raw")
    assert Path(ours).stat().st_size == theirs.stat().st_size == capacity
    assert sparse_sha256(Path(ours)) == sparse_sha256(theirs)


@pytest.mark.parametrize("subformat", QEMU_SUBFORMATS)
def test_qemu_made_subformats_round_trip(subformat: str, raw: Path, tmp_path: Path) -> None:
    vmdk = qemu_vmdk(raw, tmp_path / "disk.vmdk", subformat)
    with open_vmdk(vmdk) as image:
        assert image.capacity == raw.stat().st_size
        assert image.create_type == subformat
        if subformat == "streamOptimized":
            assert "qemu-img" in image.layout
    out = tmp_path / "out.raw"
    convert(vmdk, out)
    assert filecmp.cmp(out, raw, shallow=False)
    assert filecmp.cmp(out, qemu_to_raw(vmdk, tmp_path / "qemu.raw"), shallow=False)


@pytest.mark.parametrize("create_type", ["vmfs", "vmfsThin"])
def test_vmfs_descriptors(create_type: str, raw: Path, tmp_path: Path) -> None:
    desc = vmfs_pair(raw, tmp_path, create_type)
    with open_vmdk(desc) as image:
        assert image.create_type == create_type
        assert [e.kind for _, e in image.extents] == ["flat"]
    out = tmp_path / "out.raw"
    convert(desc, out)
    assert filecmp.cmp(out, raw, shallow=False)


def test_own_stream_and_virtualbox_layout_round_trip(raw: Path, tmp_path: Path) -> None:
    ours = tmp_path / "ours.vmdk"
    write_stream_optimized(raw, ours)
    vbox = virtualbox_stream(ours, tmp_path / "vbox.vmdk")
    for vmdk, layout in ((ours, "as VMware writes"), (vbox, "as VirtualBox writes")):
        with open_vmdk(vmdk) as image:
            assert layout in image.layout
            out = tmp_path / f"{vmdk.stem}.raw"
            write_raw(image, out, workers=2)
        assert filecmp.cmp(out, raw, shallow=False)
        assert filecmp.cmp(out, qemu_to_raw(vmdk, tmp_path / "q.raw"), shallow=False)


@pytest.mark.parametrize(
    "fmt,subformat",
    [("raw", None), ("qcow2", None), ("vmdk", "monolithicSparse"), ("vmdk", "streamOptimized")],
)
def test_raw_to_each_format_and_back(
    fmt: str, subformat: str | None, raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / f"disk.{fmt}"
    convert(raw, out, fmt, subformat)
    back = tmp_path / "back.raw"
    convert(out, back)
    assert filecmp.cmp(back, raw, shallow=False)
    if fmt != "raw":
        check = subprocess.run(["qemu-img", "check", "-f", fmt, str(out)], capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_ovf_with_manifest_converts(tmp_path: Path) -> None:
    result = convert(DATA / "ubuntu.2.0.ovf", tmp_path / "u.raw")
    assert result.source["container"] == "ovf"
    assert result.source["package"]["manifestVerified"] == [
        "ubuntu.2.0-disk1.vmdk",
        "ubuntu.2.0.ovf",
    ]
    assert result.source["controller"] == "sata AHCI"
    assert Path(result.output).stat().st_size == 8 << 30
