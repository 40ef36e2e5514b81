"""fsck and recovery on a real AMILAB_HOME: real files, a real registry, and owners that are
real processes (a child that has been killed and reaped is a dead owner, this test's own
process a live one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder import paths
from builder.ids import file_sha256, sparse_sha256
from builder.images.records import ImageRecord
from builder.images.registry import Registry, store_artifact
from builder.images.tables import JsonTable
from builder.pids import process_start
from builder.state import fsck, pending, workarea
from tests.conftest import run_amilab


def _dead_owner() -> dict[str, int]:
    child = subprocess.Popen(["sleep", "60"])
    start = process_start(child.pid) or 0
    child.kill()
    child.wait()
    return {"Pid": child.pid, "Start": start}


def _place(name: str, data: bytes, size: int = 0) -> Path:
    """A file made in the work area and stored as an artifact, the work dir then gone (while
    a live process has work there, what it placed is not called an orphan yet)."""
    work = workarea.new_dir("test")
    src = work / name
    with open(src, "wb") as f:
        f.truncate(size)
        f.write(data)
    digest = sparse_sha256(src) if name.endswith(".raw") else file_sha256(src)
    stored = store_artifact(src, digest, src.suffix)
    shutil.rmtree(work)
    return stored


def _image(tmp_path: Path, data: bytes = b"disk bytes") -> ImageRecord:
    stored = _place("disk.raw", data, 1 << 20)
    digest = stored.name.split(".")[0]
    rec = ImageRecord("ami-0123456789abcdef0", "machine", "base", digest=digest,
                      locations={"raw": str(stored)}, image_location=str(stored))  # fmt: skip
    Registry().register([rec])
    return rec


def _kinds(report: fsck.Report) -> list[tuple[str, str]]:
    return sorted((f.kind, f.resource) for f in report.findings)


def test_store_artifact_places_a_read_only_file_and_fsck_is_clean(
    amilab_home: Path, tmp_path: Path
) -> None:
    rec = _image(tmp_path)
    placed = Path(rec.locations["raw"])
    assert placed.parent.parent == paths.artifacts_dir()
    assert oct(placed.stat().st_mode & 0o777) == "0o444"
    live = workarea.new_dir("live")
    assert workarea.sweep() == [] and live.is_dir()  # this process lives: its work stays
    report = fsck.check()
    assert report.findings == [] and report.files_hashed == 1


def test_a_pending_snapshot_of_a_dead_process_is_found_and_failed(amilab_home: Path) -> None:
    snaps = JsonTable("snapshots", "snapshot")
    row = {"SnapshotId": "snap-0000000000000dead", "State": "pending", "Progress": "0%",
           "Amilab": {"Owner": _dead_owner()}}  # fmt: skip
    snaps.insert(row["SnapshotId"], row)
    live = {**row, "SnapshotId": "snap-00000000000000a1", "Amilab": {"Owner": pending.owner()}}
    snaps.insert(live["SnapshotId"], live)
    assert _kinds(fsck.check()) == [("PendingWithoutProcess", "snap-0000000000000dead")]
    report = fsck.repair()
    assert report.findings == [] and [f.resource for f in report.repaired] == [row["SnapshotId"]]
    failed = snaps.get(row["SnapshotId"])
    assert failed is not None and failed["State"] == "error" and failed["StateMessage"]
    assert (snaps.get(live["SnapshotId"]) or {})["State"] == "pending"  # its owner lives


def test_a_pending_image_and_a_store_task_of_a_dead_process_end_failed(
    amilab_home: Path,
) -> None:
    rec = ImageRecord("ami-00000000000000bad", "machine", "half", state="pending",
                      extra={"owner": _dead_owner()})  # fmt: skip
    Registry().register([rec])
    assert [s.key for s in pending.recover()] == [rec.image_id]
    got = Registry().get(rec.image_id)
    assert got is not None and got.state == "failed"
    assert got.describe()["StateReason"]["Message"] == pending.REASON
    assert pending.stale() == []


def test_orphans_go_to_quarantine_and_what_a_record_names_stays(
    amilab_home: Path, tmp_path: Path
) -> None:
    rec = _image(tmp_path)
    orphan = _place("x.initrd", b"nobody names me")
    leftover = paths.work_root() / f"build@{_dead_owner()['Pid']}.1.abcdefgh"
    leftover.mkdir()
    (leftover / "disk.raw").write_bytes(b"half")
    found = _kinds(fsck.check())
    assert ("OrphanArtifact", orphan.name) in found
    assert ("WorkLeftover", leftover.name) in found
    report = fsck.repair()
    assert report.findings == []
    assert not orphan.exists() and not leftover.exists()
    moved = list((amilab_home / "quarantine").rglob(orphan.name))
    assert len(moved) == 1 and moved[0].read_bytes() == b"nobody names me"
    assert Path(rec.locations["raw"]).is_file()  # named by a record: never moved


def test_a_wrong_digest_is_reported_and_rehashed_only_when_the_file_changes(
    amilab_home: Path, tmp_path: Path
) -> None:
    rec = _image(tmp_path)
    disk = Path(rec.locations["raw"])
    assert fsck.check().files_hashed == 1
    again = fsck.check()
    assert again.files_hashed == 0 and again.files_cached == 1 and again.findings == []
    os.chmod(disk, 0o644)
    with open(disk, "r+b") as f:
        f.write(b"flipped")
    report = fsck.check()
    assert report.files_hashed == 1
    assert _kinds(report) == [("DigestMismatch", rec.image_id)]
    assert _kinds(fsck.repair()) == [("DigestMismatch", rec.image_id)]  # not repairable
    assert disk.exists()


def test_missing_files_snapshots_and_volumes_are_reported(amilab_home: Path) -> None:
    mapping = {"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": "snap-000000000000000aa"}}
    rec = ImageRecord("ami-0000000000000feed", "machine", "gone", root_device_name="/dev/xvda",
                      locations={"raw": str(amilab_home / "artifacts/00/missing.raw")},
                      block_device_mappings=[mapping])  # fmt: skip
    Registry().register([rec])
    inst = {"InstanceId": "i-0000000000000beef", "State": {"Name": "running"},
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda",
                                     "Ebs": {"VolumeId": "vol-0000000000000000b"}}]}  # fmt: skip
    JsonTable("instances", "instance").insert(inst["InstanceId"], inst)
    assert _kinds(fsck.check()) == [
        ("MissingFile", rec.image_id),
        ("MissingSnapshot", rec.image_id),
        ("MissingVolume", inst["InstanceId"]),
    ]


def test_a_volume_in_use_by_a_missing_instance_is_detached_by_repair(amilab_home: Path) -> None:
    """What a launch killed while undoing itself leaves: the instance's record gone, its
    volume still in use; repair makes it available, and a volume whose instance exists
    stays attached."""
    from builder.images import volumes

    lost, kept = volumes.create_volume(1), volumes.create_volume(1)
    inst = {"InstanceId": "i-0000000000000cafe", "State": {"Name": "running"},
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvdb",
                                     "Ebs": {"VolumeId": kept["VolumeId"]}}]}  # fmt: skip
    JsonTable("instances", "instance").insert(inst["InstanceId"], inst)
    volumes.attach(lost["VolumeId"], "i-00000000000000bad", "/dev/xvda", True)
    volumes.attach(kept["VolumeId"], inst["InstanceId"], "/dev/xvdb", True)
    assert _kinds(fsck.check()) == [("AttachedToMissingInstance", lost["VolumeId"])]
    repaired = fsck.repair()
    assert [(f.kind, f.resource) for f in repaired.repaired] == [
        ("AttachedToMissingInstance", lost["VolumeId"])
    ]
    assert repaired.findings == []
    assert volumes.volumes().find(lost["VolumeId"], "x")["State"] == "available"
    assert volumes.volumes().find(kept["VolumeId"], "x")["State"] == "in-use"


def test_the_cli_exits_1_on_findings_and_0_once_repaired(amilab_home: Path) -> None:
    assert run_amilab("fsck", "--json", check=True).returncode == 0
    leftover = paths.work_root() / f"import@{_dead_owner()['Pid']}.1.abcdefgh"
    leftover.mkdir(parents=True)
    found = run_amilab("fsck", "--json")
    assert found.returncode == 1, found.stderr
    assert json.loads(found.stdout)["Findings"][0]["Kind"] == "WorkLeftover"
    fixed = run_amilab("fsck", "--repair", "--json")
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["Findings"] == []
    assert not leftover.exists()


@pytest.mark.parametrize("command", ["describe-volumes", "images"])
def test_any_other_command_recovers_what_a_dead_process_left(
    amilab_home: Path, command: str
) -> None:
    leftover = paths.work_root() / f"snapshot-x@{_dead_owner()['Pid']}.1.abcdefgh"
    leftover.mkdir(parents=True)
    row = {"VolumeId": "vol-000000000000000c1", "State": "creating", "Size": 1,
           "SnapshotId": "", "AvailabilityZone": "us-east-1a", "CreateTime": "",
           "VolumeType": "gp2", "Encrypted": False, "Attachments": [], "Tags": [],
           "Amilab": {"Path": "", "Owner": _dead_owner()}}  # fmt: skip
    JsonTable("volumes", "volume").insert(row["VolumeId"], row)
    run_amilab(command, "--json", check=True)
    assert not leftover.exists()
    assert (JsonTable("volumes", "volume").get(row["VolumeId"]) or {})["State"] == "error"
    assert run_amilab("fsck", "--json").returncode == 0
