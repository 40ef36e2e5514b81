"""ImportImage and DescribeImportImageTasks: VM Import's API over `amilab import`.

A disk in a bucket (the server's S3 endpoint, or a directory bucket as for the store
tasks) is fetched, validated, converted, inspected and registered by
`builder.images.importer.import_disk`, in a thread, acting as the caller; the task's record
(its own table in the registry) says where it is. As on EC2 the task is `active` with a
StatusMessage and Progress while it runs, `completed` with the ImageId, or `deleted` with
the reason ("ClientError: …" for the disk's fault, "ServerError: …" for ours). A task the
server was running when it stopped is reported `deleted`: nothing finishes it any more.
What is checked before the task starts (the bucket and the object, one disk, its format)
is refused at once with EC2's error codes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any

from builder import paths
from builder.errors import AmilabError
from builder.ids import random_id
from builder.images import targets
from builder.images.importer import import_disk
from builder.images.shapes import acting_as
from builder.images.tables import JsonTable, Row
from harness.api.actions.common import Context, Params, Result, action, tag_specs
from harness.api.actions.filters import field, filtered
from harness.api.actions.images import bucket_target
from harness.api.errors import ApiError

FORMATS = ("VMDK", "OVA", "RAW")  # what amilab's converter reads (plus qcow2, not EC2's)
_PRIVATE = ("OwnerId", "Pid")
_running: dict[str, Path] = {}  # tasks whose thread is alive here, and their work dirs
_lock = threading.Lock()
STOPPED = "ServerError: the server stopped during the import"


def tasks() -> JsonTable:
    return JsonTable("import_image_tasks", "import task")


def _set(task_id: str, **fields: Any) -> None:
    tasks().update(task_id, lambda row: row.update(fields))


def _disk(p: Params) -> dict[str, Any]:
    containers = p.get("DiskContainers") or []
    if not containers:
        raise ApiError("MissingParameter", "The request must contain the parameter DiskContainers")
    if len(containers) > 1:
        raise ApiError("UnsupportedOperation", "one disk per import here (DiskContainers: 1)")
    disk = containers[0]
    fmt = (disk.get("Format") or "").upper()
    if fmt and fmt not in FORMATS:
        raise ApiError(
            "InvalidParameterValue",
            f"Invalid value '{disk.get('Format')}' for Format; allowed: {', '.join(FORMATS)}",
        )
    bucket = disk.get("UserBucket") or {}
    if not bucket and disk.get("Url"):
        url = str(disk["Url"])
        if not url.startswith("s3://") or "/" not in url[5:]:
            raise ApiError(
                "InvalidParameterValue", f"Invalid value '{url}' for Url: s3://BUCKET/KEY"
            )
        name, key = url[5:].split("/", 1)
        bucket = {"S3Bucket": name, "S3Key": key}
    if not bucket.get("S3Bucket") or not bucket.get("S3Key"):
        raise ApiError("MissingParameter", "The disk needs UserBucket (S3Bucket, S3Key) or Url")
    where = {"S3Bucket": bucket["S3Bucket"], "S3Key": bucket["S3Key"]}
    return {"Format": fmt, "UserBucket": where, "Description": disk.get("Description")}


def _fetch(chunks: Any, dest: Path, task_id: str, size: int | None) -> int:
    """The object into `dest`, zero blocks as holes (a raw disk stays sparse)."""
    got = 0
    with open(dest, "wb") as f:
        for chunk in chunks:
            if chunk.count(0) == len(chunk):
                f.seek(len(chunk), os.SEEK_CUR)
            else:
                f.write(chunk)
            got += len(chunk)
            if size:
                _set(task_id, Progress=str(min(30, 5 + 25 * got // size)))
        f.truncate(got)
    return got


def _run(task_id: str, account: str, target: targets.Target, key: str, work: Path) -> None:
    try:
        with acting_as(account):
            _set(task_id, StatusMessage="validating", Progress="5")
            src = work / (PurePosixPath(key).name or "disk")
            row = tasks().get(task_id) or {}
            size = row.get("SnapshotDetails", [{}])[0].get("DiskImageSize")
            got = _fetch(target.reader(key), src, task_id, size)
            _set(task_id, StatusMessage="converting", Progress="40")
            rec = import_disk(src, name=task_id, quiet=True, work_dir=work)
            image = rec.describe()
            snapshot = next((m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]
                             if "Ebs" in m), None)  # fmt: skip

            def done(r: Row) -> None:
                detail = {**r["SnapshotDetails"][0], "DiskImageSize": float(got),
                          "Status": "completed", "SnapshotId": snapshot, "Progress": "100",
                          "DeviceName": image["RootDeviceName"]}  # fmt: skip
                r.update(Status="completed", StatusMessage=None, Progress=None,
                         ImageId=rec.image_id, SnapshotDetails=[detail],
                         Architecture=image["Architecture"], Platform="Linux")  # fmt: skip

            tasks().update(task_id, done)
    except AmilabError as e:
        kind = "ClientError" if e.exit_code == 2 else "ServerError"
        _set(task_id, Status="deleted", Progress=None,
             StatusMessage=f"{kind}: {str(e).strip().splitlines()[0]}")  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the task says so; the server goes on
        _set(task_id, Status="deleted", Progress=None, StatusMessage=f"ServerError: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with _lock:
            _running.pop(task_id, None)


def _sweep() -> None:
    """Work left by a server killed mid-import (SIGKILL: no `stop_all`) goes now."""
    root = paths.work_root()
    root.mkdir(parents=True, exist_ok=True)
    for d in root.glob("import-ami-*.*.*"):
        pid = d.name.split(".")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def stop_all() -> None:
    """The server is stopping: its running imports end here, as `deleted`, their work
    removed (the threads die with the process; nothing they made is registered)."""
    with _lock:
        running = dict(_running)
        _running.clear()
    for task_id, work in running.items():
        _set(task_id, Status="deleted", Progress=None, StatusMessage=STOPPED)
        shutil.rmtree(work, ignore_errors=True)


@action("ImportImage", "InvalidParameterValue")
def import_image(p: Params, ctx: Context) -> Result:
    disk = _disk(p)
    bucket, object_key = disk["UserBucket"]["S3Bucket"], disk["UserBucket"]["S3Key"]
    if p.get("LicenseType") not in (None, "BYOL", "AWS", "Auto"):
        raise ApiError(
            "InvalidParameterValue", f"Invalid value '{p['LicenseType']}' for LicenseType"
        )
    spec, endpoint = bucket_target(bucket, ctx)
    target = targets.parse_bucket(spec, endpoint)
    try:  # the object must be there and readable before a task is made for it
        size = target.size(object_key)
    except AmilabError as e:
        raise ApiError("InvalidParameter", f"s3://{bucket}/{object_key}: cannot read the disk "
                       f"({str(e).splitlines()[0]})") from None  # fmt: skip
    task_id = random_id("import-ami")
    row: Row = {
        "ImportTaskId": task_id,
        "Description": p.get("Description"),
        "Status": "active",
        "StatusMessage": "pending",
        "Progress": "0",
        "LicenseType": p.get("LicenseType") or "BYOL",
        "Hypervisor": "xen",
        "Encrypted": False,
        "SnapshotDetails": [
            {
                "Description": disk["Description"],
                "Format": disk["Format"] or None,
                "UserBucket": disk["UserBucket"],
                "DiskImageSize": float(size),
                "Status": "active",
            }
        ],
        "Tags": [{"Key": k, "Value": v} for k, v in tag_specs(p, "import-image-task").items()],
        "OwnerId": ctx.account_id,
        "Pid": os.getpid(),
    }
    _sweep()
    work = Path(tempfile.mkdtemp(prefix=f"{task_id}.{os.getpid()}.", dir=paths.work_root()))
    tasks().insert(task_id, row)
    with _lock:
        _running[task_id] = work
    threading.Thread(target=_run, args=(task_id, ctx.account_id, target, object_key, work),
                     name=task_id, daemon=True).start()  # fmt: skip
    return _public(row)


def _public(row: Row) -> Row:
    out = {k: v for k, v in row.items() if k not in _PRIVATE and v is not None}
    out["SnapshotDetails"] = [{k: v for k, v in d.items() if v is not None}
                              for d in row.get("SnapshotDetails") or []]  # fmt: skip
    return out


def _as_now(row: Row) -> Row:
    """A task left active by a server that is gone is not running: say so."""
    if row.get("Status") == "active":
        with _lock:
            alive = row.get("Pid") == os.getpid() and row["ImportTaskId"] in _running
        if not alive:
            row = {**row, "Status": "deleted", "Progress": None, "StatusMessage": STOPPED}
    return row


@action("DescribeImportImageTasks", "InvalidConversionTaskId")
def describe_import_image_tasks(p: Params, ctx: Context) -> Result:
    mine = [r for r in tasks().list() if r.get("OwnerId") == ctx.account_id]
    ids = p.get("ImportTaskIds") or []
    if ids:
        known = {r["ImportTaskId"] for r in mine}
        for i in ids:
            if i not in known:
                raise ApiError("InvalidConversionTaskId.Malformed"
                               if not str(i).startswith("import-ami-")
                               else "InvalidConversionTaskId",
                               f"The import task ID '{i}' does not exist")  # fmt: skip
        mine = [r for r in mine if r["ImportTaskId"] in ids]
    fields = {"task-state": field("Status")}
    rows = [_public(_as_now(r)) for r in mine]
    return {"ImportImageTasks": filtered(rows, p, fields)}
