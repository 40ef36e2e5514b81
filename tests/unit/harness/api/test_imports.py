"""ImportImage's refusals, a task that fails on the disk, and a task its server left behind,
through boto3 against the real server (the import of a bootable disk is in
tests/integration/test_api.py: it needs libguestfs)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from harness.api.actions import imports
from tests.unit.harness.api.conftest import B
from tests.unit.harness.api.test_api import error_of


def _bucket(api: dict, name: str = "disks") -> Path:
    root = api["home"] / "api" / "buckets" / name
    root.mkdir(parents=True, exist_ok=True)
    return root


def _wait(ec2: Any, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        (task,) = ec2.describe_import_image_tasks(ImportTaskIds=[task_id])["ImportImageTasks"]
        if task["Status"] != "active" or time.monotonic() > deadline:
            return task
        time.sleep(0.2)


def test_refusals_make_no_task(api: dict) -> None:
    ec2 = api["client"]()
    (_bucket(api) / "disk.vmdk").write_bytes(b"x")
    for disks, code in (
        ([], "MissingParameter"),
        ([{"Format": "VHDX", "UserBucket": {"S3Bucket": "disks", "S3Key": "disk.vmdk"}}],
         "InvalidParameterValue"),
        ([{"UserBucket": {"S3Bucket": "disks", "S3Key": "nope.vmdk"}}], "InvalidParameter"),
        ([{"UserBucket": {"S3Bucket": "Bad_Bucket", "S3Key": "disk.vmdk"}}],
         "InvalidParameterValue"),
        ([{"Url": "s3://disks/disk.vmdk"}] * 2, "UnsupportedOperation"),
        ([{"Url": "https://example.com/disk.vmdk"}], "InvalidParameterValue"),
    ):  # fmt: skip
        assert error_of(lambda d=disks: ec2.import_image(DiskContainers=d)) == (code, 400), disks
    assert ec2.describe_import_image_tasks()["ImportImageTasks"] == []
    assert error_of(
        lambda: ec2.describe_import_image_tasks(ImportTaskIds=["import-ami-0123456789abcdef0"])
    ) == ("InvalidConversionTaskId", 400)


def test_a_disk_that_is_not_one_ends_the_task_deleted_with_the_reason(api: dict) -> None:
    ec2 = api["client"]()
    (_bucket(api) / "broken.vmdk").write_bytes(b"KDMV" + os.urandom(4096))
    spec = [{"ResourceType": "import-image-task", "Tags": [{"Key": "ticket", "Value": "42"}]}]
    started = ec2.import_image(
        Description="broken",
        DiskContainers=[{"Format": "vmdk", "Url": "s3://disks/broken.vmdk"}],
        TagSpecifications=spec,
    )
    assert started["Status"] == "active" and started["ImportTaskId"].startswith("import-ami-")
    assert started["SnapshotDetails"][0]["UserBucket"] == {
        "S3Bucket": "disks", "S3Key": "broken.vmdk"}  # fmt: skip
    task = _wait(ec2, started["ImportTaskId"])
    assert task["Status"] == "deleted", task
    assert task["StatusMessage"].startswith("ClientError: "), task["StatusMessage"]
    assert "broken.vmdk" in task["StatusMessage"]
    assert task["Tags"] == [{"Key": "ticket", "Value": "42"}]
    assert "ImageId" not in task and ec2.describe_images(Owners=["self"])["Images"] == []
    work = api["home"] / "work"
    assert not work.exists() or not any(p.name.startswith("import") for p in work.iterdir())
    # the task is the caller's: another account sees none
    assert api["client"](B).describe_import_image_tasks()["ImportImageTasks"] == []
    failed = ec2.describe_import_image_tasks(
        Filters=[{"Name": "task-state", "Values": ["deleted"]}]
    )["ImportImageTasks"]
    assert [t["ImportTaskId"] for t in failed] == [started["ImportTaskId"]]


def test_a_task_whose_server_is_gone_reads_deleted(api: dict) -> None:
    ec2 = api["client"]()
    imports.tasks().insert(
        "import-ami-0123456789abcdef0",
        {"ImportTaskId": "import-ami-0123456789abcdef0", "Status": "active",
         "StatusMessage": "converting", "Progress": "40", "SnapshotDetails": [],
         "OwnerId": "111111111111", "Pid": 0},
    )  # fmt: skip
    (task,) = ec2.describe_import_image_tasks()["ImportImageTasks"]
    assert task["Status"] == "deleted"
    assert task["StatusMessage"] == "ServerError: the server stopped during the import"


def test_a_stopping_server_ends_its_imports_and_leaves_no_work(api: dict) -> None:
    from builder import paths

    ec2 = api["client"]()
    tid = "import-ami-0123456789abcdef1"
    work = paths.work_root() / f"{tid}.{os.getpid()}.x"
    (work / "import-y").mkdir(parents=True)
    (work / "import-y" / "disk.raw").write_bytes(b"half")
    imports.tasks().insert(tid, {"ImportTaskId": tid, "Status": "active", "Progress": "40",
                                 "StatusMessage": "converting", "SnapshotDetails": [],
                                 "OwnerId": "111111111111", "Pid": os.getpid()})  # fmt: skip
    imports._running[tid] = work
    (task,) = ec2.describe_import_image_tasks(ImportTaskIds=[tid])["ImportImageTasks"]
    assert task["Status"] == "active"
    imports.stop_all()
    assert not work.exists() and tid not in imports._running
    (task,) = ec2.describe_import_image_tasks(ImportTaskIds=[tid])["ImportImageTasks"]
    assert (task["Status"], task["StatusMessage"]) == ("deleted", imports.STOPPED)
    # a killed server's work (its process gone) is swept by the next import; a live one's stays
    dead = paths.work_root() / "import-ami-0123456789abcdef2.999999999.z"
    live = paths.work_root() / f"import-ami-0123456789abcdef3.{os.getpid()}.z"
    dead.mkdir()
    live.mkdir()
    imports._sweep()
    assert not dead.exists() and live.exists()
