"""Volumes and snapshots with real qemu-img files: a volume over a snapshot is
copy-on-write (writing it leaves the snapshot's bytes as they were), a snapshot of it is a
new immutable artifact, and EC2's refusals carry EC2's codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.ids import file_sha256
from builder.images import volumes
from builder.images.records import ImageRecord
from builder.images.registry import Registry
from builder.images.shapes import root_ebs_mapping
from tests.conftest import need


@pytest.fixture
def image(amilab_home: Path, tmp_path: Path) -> ImageRecord:
    need("qemu-img", "qemu-utils")
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
        f.write(b"original bytes")
    rec = ImageRecord("ami-0123456789abcdef0", "machine", "base", virtualization_type="hvm",
                      root_device_name="/dev/xvda", root_device_type="ebs")  # fmt: skip
    rec.digest = "ab" * 32
    rec.locations = {"raw": str(disk)}
    rec.image_location = str(disk)
    rec.block_device_mappings = root_ebs_mapping("/dev/xvda", rec.digest, 8 << 20)
    Registry().register([rec])
    return rec


def _write(path: Path, data: bytes) -> None:
    import subprocess

    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x41 0 {len(data)}", str(path)],
                   check=True, capture_output=True)  # fmt: skip


def test_volume_over_a_snapshot_and_its_snapshot(image: ImageRecord) -> None:
    need("qemu-io", "qemu-utils")
    snap = volumes.image_snapshot(image)
    assert snap["SnapshotId"] == "snap-" + "ab" * 8 + "a" and snap["State"] == "completed"
    before = file_sha256(volumes.snapshot_path(snap))
    vol = volumes.create_volume(None, snap["SnapshotId"])
    assert vol["Size"] == 1 and vol["SnapshotId"] == snap["SnapshotId"]
    _write(volumes.volume_path(vol), b"A" * 512)
    assert file_sha256(volumes.snapshot_path(snap)) == before  # the snapshot never changes
    new = volumes.create_snapshot(vol["VolumeId"], "after")
    assert new["State"] == "completed" and new["SnapshotId"] != snap["SnapshotId"]
    assert volumes.snapshot_path(new).read_bytes()[:4] == b"AAAA"
    assert volumes.snapshot_path(snap).read_bytes()[:8] == b"original"
    copy = volumes.copy_snapshot(new["SnapshotId"])
    assert copy["Amilab"]["Path"] == new["Amilab"]["Path"]
    ids = {s["SnapshotId"] for s in volumes.describe_snapshots()}
    assert {snap["SnapshotId"], new["SnapshotId"], copy["SnapshotId"]} <= ids
    assert all("Amilab" not in s for s in volumes.describe_snapshots())


def test_refusals_carry_ec2_codes(image: ImageRecord) -> None:
    snap = volumes.image_snapshot(image)
    with pytest.raises(BadInput, match="^InvalidSnapshot.InUse: .*ami-0123456789abcdef0"):
        volumes.delete_snapshot(snap["SnapshotId"])
    with pytest.raises(BadInput, match="^InvalidSnapshot.NotFound"):
        volumes.create_volume(None, "snap-00000000000000000")
    with pytest.raises(BadInput, match="^MissingParameter"):
        volumes.create_volume()
    vol = volumes.create_volume(2)
    volumes.attach(vol["VolumeId"], "i-0123456789abcdef0", "/dev/sdf", False)
    with pytest.raises(BadInput, match="^VolumeInUse"):
        volumes.delete_volume(vol["VolumeId"])
    with pytest.raises(BadInput, match="^VolumeInUse"):
        volumes.attach(vol["VolumeId"], "i-0123456789abcdef1", "/dev/sdg", False)
    volumes.detach(vol["VolumeId"])
    volumes.delete_volume(vol["VolumeId"])
    assert not volumes.volume_path(vol).exists()
    with pytest.raises(BadInput, match="^InvalidVolume.NotFound"):
        volumes.delete_volume(vol["VolumeId"])
