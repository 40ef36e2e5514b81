"""OVA/OVF: OVF 1.x and 2.0 disks and controllers, .mf digests in SHA1/SHA256/SHA512,
unpacking into a private directory, conversion of the OVA's disk."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from builder.disk.convert import convert
from builder.disk.ova import open_ova, open_ovf, parse_manifest, parse_ovf
from builder.errors import BadInput
from tests.unit.builder.disk.vmdk.support import DATA, make_ova

UBUNTU = ("ubuntu.2.0.ovf", "ubuntu.2.0-disk1.vmdk")


def test_ovf_1x_vmware() -> None:
    ovf = parse_ovf((DATA / "vmware.ovf").read_bytes(), "vmware.ovf")
    assert ovf.version == "1.x"
    assert ovf.name == "vmw"
    assert ovf.os_description == "Red Hat Enterprise Linux 6 (64-bit)"
    (disk,) = ovf.disks
    assert disk.capacity == 1 << 30  # "1" in "byte * 2^30"
    assert disk.href == "input.vmdk"
    assert disk.format.endswith("#streamOptimized")
    assert disk.controller == "scsi virtio lsilogic"
    assert ovf.files["file1"]["size"] == 152576


def test_ovf_20_virtualbox() -> None:
    ovf = parse_ovf((DATA / "ubuntu.2.0.ovf").read_bytes(), "ubuntu.2.0.ovf")
    assert ovf.version == "2.0"
    (disk,) = ovf.disks
    assert disk.capacity == 8 << 30
    assert disk.controller == "sata AHCI"


@pytest.mark.parametrize("algo", ["SHA1", "SHA256", "SHA512"])
def test_ova_with_each_digest(algo: str, tmp_path: Path) -> None:
    members = [(n, (DATA / n).read_bytes()) for n in UBUNTU]
    mf = "".join(
        f"{algo}({n})= {hashlib.new(algo.lower(), data).hexdigest()}\n" for n, data in members
    )
    ova = make_ova(tmp_path / "u.ova", [members[0], ("u.mf", mf.encode()), members[1]])
    pkg = open_ova(ova, tmp_path / "unpacked")
    assert sorted(pkg.verified) == sorted(UBUNTU)
    assert stat.S_IMODE((tmp_path / "unpacked").stat().st_mode) == 0o700
    assert pkg.disk_paths() == [tmp_path / "unpacked" / UBUNTU[1]]


def test_ova_converts_and_leaves_only_the_output(tmp_path: Path) -> None:
    members = [(n, (DATA / n).read_bytes()) for n in (*UBUNTU, "ubuntu.2.0.mf")]
    ova = make_ova(tmp_path / "in.ova", members)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = convert(ova, out_dir / "disk.raw")
    assert result.source["container"] == "ova"
    assert [p.name for p in out_dir.iterdir()] == ["disk.raw"]
    assert (out_dir / "disk.raw").stat().st_size == 8 << 30


def test_ovf_beside_its_files_verifies_the_manifest() -> None:
    pkg = open_ovf(DATA / "ubuntu.2.0.ovf")
    assert pkg.verified == ["ubuntu.2.0-disk1.vmdk", "ubuntu.2.0.ovf"]


@pytest.mark.parametrize(
    "text,error",
    [
        (b"SHA256(a)= 00\n", "wrong length"),
        (b"MD5(a)= 00\n", "cannot parse"),
        (b"SHA1(../x)= " + b"0" * 40 + b"\n", "escapes"),
    ],
)
def test_bad_manifests(text: bytes, error: str) -> None:
    with pytest.raises(BadInput, match=error):
        parse_manifest(text, "x.mf")


@pytest.mark.parametrize(
    "xml,error",
    [
        (b"<Envelope/>", "not an OVF"),
        (b"<not xml", "not well-formed"),
        (
            b'<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
            b'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><DiskSection>'
            b'<Disk ovf:diskId="d" ovf:capacity="${size}"/></DiskSection></Envelope>',
            "not a number",
        ),
        (
            b'<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
            b'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References>'
            b'<File ovf:id="f" ovf:href="/etc/passwd"/></References></Envelope>',
            "escapes",
        ),
    ],
)
def test_bad_ovf(xml: bytes, error: str) -> None:
    with pytest.raises(BadInput, match=error):
        parse_ovf(xml, "x.ovf")
