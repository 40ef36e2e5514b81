"""Store and restore an AMI as one compressed object, as CreateStoreImageTask and
CreateRestoreImageTask do: `<path>/<ami-id>.bin` in a directory or an S3 bucket.

The object is a gzip-compressed tar stream (the same one-pass machinery as bundles):
`amilab-image.json` (the image's record with its tags, and those of its kernel and ramdisk
when they are included), `disk.raw` (a sparse member), optionally `kernel.vmlinuz` and
`ramdisk.initrd`, and last `amilab-digests.json` with each member's size and SHA-256. The
gzip CRC covers the whole stream, the trailer each member, and the restored disk must also
give the digest recorded at its build. The image's name, description, creation date, owner
and the store time are also the object's metadata (S3 user metadata; beside a directory's
object, `<object>.metadata.json`).

A store is a task with a state (InProgress, Completed, Failed) and a percentage, kept in the
registry database so `amilab store-tasks` can show it from elsewhere while it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from builder.errors import BadInput, EnvironmentProblem
from builder.ids import file_sha256, sparse_sha256
from builder.images import factory, sparsetar, transfer
from builder.images.lifecycle import check_name_free, image_file, work_dir
from builder.images.records import record_from_dict, record_to_dict
from builder.images.registry import ImageRecord, Registry, account_id, now_iso, store_artifact
from builder.pids import pid_alive

FORMAT = "amilab-store-image/1"
META_MEMBER = "amilab-image.json"
TRAILER_MEMBER = "amilab-digests.json"
DISK_MEMBER = "disk.raw"
KERNEL_MEMBER = "kernel.vmlinuz"
RAMDISK_MEMBER = "ramdisk.initrd"
S3_PART_SIZE = 16 << 20  # multipart upload part size (S3's minimum is 5 MiB)
TASK_HISTORY_DAYS = 31  # DescribeStoreImageTasks shows the last 31 days


# --------------------------------------------------------------------- destinations


class Target(Protocol):
    """Where objects live: a directory or an S3 bucket (with a key prefix)."""

    url: str

    def key(self, image_id: str) -> str: ...

    def writer(self, key: str, metadata: dict[str, str]) -> ObjectWriter: ...

    def reader(self, key: str) -> Iterator[bytes]: ...

    def metadata(self, key: str) -> dict[str, str]: ...

    def size(self, key: str) -> int: ...  # BadInput when there is no readable object


class ObjectWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> int: ...  # bytes stored, checked against what was sent

    def abort(self) -> None: ...


def parse_bucket(spec: str, endpoint_url: str | None = None) -> Target:
    """`s3://bucket[/path]` for S3, anything else (or file://) for a directory."""
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
        if not bucket:
            raise BadInput(f"--bucket {spec}: no bucket name")
        return S3Target(bucket, prefix.strip("/"), endpoint_url)
    return DirectoryTarget(Path(spec.removeprefix("file://")))


def _key(prefix: str, image_id: str) -> str:
    return f"{prefix}/{image_id}.bin" if prefix else f"{image_id}.bin"


class DirectoryTarget:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def key(self, image_id: str) -> str:
        return f"{image_id}.bin"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in Path(key).parts:
            raise BadInput(f"object key {key!r} must stay inside {self.root}")
        return self.root / key

    def writer(self, key: str, metadata: dict[str, str]) -> ObjectWriter:
        return _FileWriter(self._path(key), metadata)

    def reader(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except OSError as e:
            raise BadInput(f"{path}: cannot read the object ({e.strerror})") from e

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(4 << 20):
                    yield chunk

        return chunks()

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            with open(path, "rb"):
                return path.stat().st_size
        except OSError as e:
            raise BadInput(f"{path}: cannot read the object ({e.strerror})") from e

    def metadata(self, key: str) -> dict[str, str]:
        side = self._path(key).with_name(self._path(key).name + ".metadata.json")
        try:
            return json.loads(side.read_text())
        except (OSError, ValueError):
            return {}


class _FileWriter:
    def __init__(self, path: Path, metadata: dict[str, str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        self.meta = metadata
        self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.sent += len(data)

    def commit(self) -> int:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        stored = self.tmp.stat().st_size
        if stored != self.sent:
            raise EnvironmentProblem(f"{self.path}: wrote {self.sent} bytes, {stored} arrived")
        side = self.path.with_name(self.path.name + ".metadata.json")
        side.write_text(json.dumps(self.meta, indent=1, sort_keys=True) + "\n")
        os.rename(self.tmp, self.path)  # the object appears only when whole
        return stored

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


class S3Target:
    """An S3 bucket through boto3. The endpoint comes from --endpoint-url, else from
    AMILAB_S3_ENDPOINT_URL, else from boto3's own configuration (AWS_ENDPOINT_URL...)."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url or os.environ.get("AMILAB_S3_ENDPOINT_URL") or None
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as e:  # pragma: no cover - a declared dependency
                raise EnvironmentProblem("boto3 is missing: pip install boto3") from e
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._client

    def key(self, image_id: str) -> str:
        return _key(self.prefix, image_id)

    def writer(self, key: str, metadata: dict[str, str]) -> ObjectWriter:
        return _S3Writer(self, key, metadata)

    def reader(self, key: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            raise BadInput(f"s3://{self.bucket}/{key}: {_s3_reason(e)}") from e
        except BotoCoreError as e:
            raise EnvironmentProblem(f"S3 at {self.endpoint_url or 'AWS'}: {e}") from e
        expected = int(obj.get("ContentLength", -1))

        def chunks() -> Iterator[bytes]:
            got = 0
            body = obj["Body"]
            try:
                for chunk in body.iter_chunks(4 << 20):
                    got += len(chunk)
                    yield chunk
            except BotoCoreError as e:  # a connection cut mid-download
                raise BadInput(f"s3://{self.bucket}/{key}: download broke off ({e})") from e
            finally:
                body.close()
            if expected >= 0 and got != expected:
                raise BadInput(f"s3://{self.bucket}/{key}: got {got} of {expected} bytes")

        return chunks()

    def size(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            raise BadInput(f"s3://{self.bucket}/{key}: {_s3_reason(e)}") from e
        except BotoCoreError as e:
            raise EnvironmentProblem(f"S3 at {self.endpoint_url or 'AWS'}: {e}") from e

    def metadata(self, key: str) -> dict[str, str]:
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key).get("Metadata", {}))
        except ClientError:
            return {}


def _s3_reason(e: Exception) -> str:
    err = getattr(e, "response", {}).get("Error", {})
    return f"{err.get('Code', 'error')}: {err.get('Message', str(e))}"


class _S3Writer:
    """Multipart upload in S3_PART_SIZE parts (a single PUT when the object is smaller);
    S3 checks each part's checksum on arrival, and the finished object's size is checked
    against what was sent before the task counts as completed."""

    def __init__(self, target: S3Target, key: str, metadata: dict[str, str]) -> None:
        self.t = target
        self.key = key
        self.meta = metadata
        self.buf = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.upload_id: str | None = None
        self.sent = 0

    def _call(self, fn: Callable[..., Any], **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except ClientError as e:
            raise EnvironmentProblem(f"s3://{self.t.bucket}/{self.key}: {_s3_reason(e)}") from e
        except BotoCoreError as e:
            raise EnvironmentProblem(f"S3 at {self.t.endpoint_url or 'AWS'}: {e}") from e

    def _flush_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self._call(
                self.t.client.create_multipart_upload,
                Bucket=self.t.bucket,
                Key=self.key,
                Metadata=self.meta,
            )["UploadId"]
        n = len(self.parts) + 1
        resp = self._call(
            self.t.client.upload_part,
            Bucket=self.t.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=n,
            Body=data,
        )
        self.parts.append({"PartNumber": n, "ETag": resp["ETag"]})

    def write(self, data: bytes) -> None:
        self.buf += data
        self.sent += len(data)
        while len(self.buf) >= S3_PART_SIZE:
            self._flush_part(bytes(self.buf[:S3_PART_SIZE]))
            del self.buf[:S3_PART_SIZE]

    def commit(self) -> int:
        c = self.t.client
        if self.upload_id is None:
            self._call(
                c.put_object, Bucket=self.t.bucket, Key=self.key, Body=bytes(self.buf),
                Metadata=self.meta,
            )  # fmt: skip
        else:
            if self.buf:
                self._flush_part(bytes(self.buf))
            self._call(
                c.complete_multipart_upload,
                Bucket=self.t.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self.buf = bytearray()
        head = self._call(c.head_object, Bucket=self.t.bucket, Key=self.key)
        stored = int(head["ContentLength"])
        if stored != self.sent:
            raise EnvironmentProblem(
                f"s3://{self.t.bucket}/{self.key}: sent {self.sent} bytes, {stored} arrived"
            )
        return stored

    def abort(self) -> None:
        if self.upload_id is not None:
            # best effort: the failure that led here is what the caller must see
            with contextlib.suppress(Exception):
                self.t.client.abort_multipart_upload(
                    Bucket=self.t.bucket, Key=self.key, UploadId=self.upload_id
                )


# ---------------------------------------------------------------------------- tasks


@dataclass
class StoreTask:
    task_id: str
    image_id: str
    bucket: str
    object_key: str
    state: str = "InProgress"
    progress: int = 0
    start_time: str = ""
    end_time: str | None = None
    failure_reason: str | None = None
    pid: int = 0
    bytes_stored: int = 0

    def describe(self) -> dict[str, Any]:
        """The DescribeStoreImageTasks shape."""
        return {
            "AmiId": self.image_id,
            "TaskStartTime": self.start_time,
            "Bucket": self.bucket,
            "S3objectKey": self.object_key,
            "ObjectKey": self.object_key,
            "ProgressPercentage": self.progress,
            "StoreTaskState": self.state,
            "StoreTaskFailureReason": self.failure_reason,
        }

    def describe_stored(self) -> dict[str, Any]:
        """What `store` reports of its finished task: the task and the bytes it wrote."""
        return {**self.describe(), "Bytes": self.bytes_stored}


_TASKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_tasks (
    task_id TEXT PRIMARY KEY,
    start_time TEXT NOT NULL,
    task TEXT NOT NULL
);
"""


class TaskLog:
    def __init__(self) -> None:
        self.path = Registry().path

    def _conn(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.executescript(_TASKS_SCHEMA)
        return conn

    def save(self, task: StoreTask) -> None:
        with closing(self._conn()) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO store_tasks VALUES (?, ?, ?)",
                (task.task_id, task.start_time, json.dumps(asdict(task))),
            )

    def recent(self, days: int = TASK_HISTORY_DAYS) -> list[StoreTask]:
        since = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S")
        with closing(self._conn()) as conn:
            rows = conn.execute(
                "SELECT task FROM store_tasks WHERE start_time >= ? ORDER BY start_time, rowid",
                (since,),
            ).fetchall()
        tasks = [StoreTask(**json.loads(r[0])) for r in rows]
        for t in tasks:  # a store whose process is gone will never finish
            if t.state == "InProgress" and not pid_alive(t.pid):
                t.state, t.failure_reason = "Failed", "the storing process ended early"
                t.end_time = t.end_time or now_iso()
                self.save(t)
        return tasks


# ---------------------------------------------------------------------------- store


@dataclass
class _Member:
    name: str
    path: Path | None = None
    data: bytes | None = None
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0


def _object_metadata(rec: ImageRecord, store_time: str) -> dict[str, str]:
    # S3 user metadata is ASCII text: non-ASCII names and descriptions are JSON-escaped
    def ascii_(s: str) -> str:
        return json.dumps(s)[1:-1] if not s.isascii() else s

    return {
        "ami-name": ascii_(rec.name),
        "ami-description": ascii_(rec.description),
        "ami-creation-date": rec.creation_date,
        "ami-owner-account": rec.owner_id or account_id(),
        "ami-store-date": store_time,
        "amilab-format": FORMAT,
    }


def store_image(
    ref: str,
    bucket: str,
    *,
    endpoint_url: str | None = None,
    with_kernel: bool = False,
    progress: Callable[[int], None] | None = None,
    recorded: Callable[[], None] | None = None,
) -> StoreTask:
    """CreateStoreImageTask, run to its end in this process; the task's state is visible
    to `store-tasks` meanwhile. Raises (and records Failed) on any error. `recorded` is
    called once the task is in the task log (a caller running this in a thread returns
    only then, so the task is listed as soon as its creation is answered, as on EC2)."""
    registry = Registry()
    rec = registry.find(ref, "machine")
    target = parse_bucket(bucket, endpoint_url)
    key = target.key(rec.image_id)
    store_time = now_iso()
    task = StoreTask(
        task_id=f"store-{secrets.token_hex(8)}",
        image_id=rec.image_id,
        bucket=target.url,
        object_key=key,
        start_time=store_time,
        pid=os.getpid(),
    )
    log = TaskLog()
    log.save(task)
    if recorded is not None:
        recorded()
    try:
        members = _members(registry, rec, with_kernel)
        total = sum(_logical_size(m) for m in members) or 1
        meta = {
            "Format": FORMAT,
            "StoreTime": store_time,
            "Image": record_to_dict(rec),
            "Kernel": _carried(registry, rec.kernel_id if with_kernel else None),
            "Ramdisk": _carried(registry, rec.ramdisk_id if with_kernel else None),
            "Members": [m.name for m in members],
        }
        members.insert(0, _Member(META_MEMBER, data=json.dumps(meta, sort_keys=True).encode()))
        done_before = [0]
        last = [0.0]

        def report(done: int) -> None:
            pct = min(99, int(100 * (done_before[0] + done) / total))
            now = time.monotonic()
            if pct != task.progress and now - last[0] > 0.5:
                task.progress, last[0] = pct, now
                log.save(task)
            if progress:
                progress(pct)

        writer = target.writer(key, _object_metadata(rec, store_time))
        try:
            tar = transfer.threaded(_tar(members, report, done_before))
            transfer.pipe(transfer.compressed(tar, lambda _: None), writer.write)
            task.bytes_stored = writer.commit()
        except BaseException:
            writer.abort()
            raise
        task.state, task.progress, task.end_time = "Completed", 100, now_iso()
        log.save(task)
        return task
    except BaseException as e:
        task.state, task.end_time = "Failed", now_iso()
        task.failure_reason = str(e) or type(e).__name__
        log.save(task)
        raise


def _carried(registry: Registry, ref: str | None) -> dict[str, Any] | None:
    other = registry.get(ref) if ref else None
    return record_to_dict(other) if other else None


def _members(registry: Registry, rec: ImageRecord, with_kernel: bool) -> list[_Member]:
    members = [_Member(DISK_MEMBER, image_file(rec))]
    if with_kernel:
        for ref, name in ((rec.kernel_id, KERNEL_MEMBER), (rec.ramdisk_id, RAMDISK_MEMBER)):
            if ref:
                other = registry.get(ref)
                if other is None:
                    raise BadInput(f"{rec.image_id} refers to {ref}, which is not registered")
                members.append(_Member(name, image_file(other)))
    return members


def _logical_size(m: _Member) -> int:
    return m.path.stat().st_size if m.path else len(m.data or b"")


def _tar(
    members: list[_Member], report: Callable[[int], None], done_before: list[int]
) -> Iterator[bytes]:
    written = 0
    for m in members:
        if m.data is not None:
            m.sha256.update(m.data)
            m.size = len(m.data)
            chunk = sparsetar.bytes_member(m.name, m.data)
            written += len(chunk)
            yield chunk
            continue
        assert m.path is not None
        m.size = m.path.stat().st_size
        for chunk in sparsetar.file_member(m.path, m.name, report, m.sha256.update):
            written += len(chunk)
            yield chunk
        done_before[0] += m.size
    trailer = {m.name: {"Size": m.size, "SHA256": m.sha256.hexdigest()} for m in members}
    data = json.dumps({"Format": FORMAT, "Members": trailer}, sort_keys=True).encode()
    chunk = sparsetar.bytes_member(TRAILER_MEMBER, data)
    written += len(chunk)
    yield chunk
    yield sparsetar.end_of_archive(written)


# -------------------------------------------------------------------------- restore


class _Sink:
    """One member on its way to a file (or memory), hashed as it arrives."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.file = sparsetar.SparseFileWriter(path) if path else None
        self.mem = bytearray()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __call__(self, offset: int, data: bytes) -> None:
        if not data:
            self.size = offset
        else:
            self.sha256.update(data)
        if self.file:
            self.file(offset, data)
        elif data:
            self.mem += data

    def close(self) -> None:
        if self.file:
            self.file.close()


@dataclass
class RestoreResult:
    image: ImageRecord
    kernel: ImageRecord | None = None
    ramdisk: ImageRecord | None = None
    object_key: str = ""
    seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        """The restored image's ID and the records registered, with their launch IDs."""
        image = self.image
        return {
            "ImageId": image.image_id, "ObjectKey": self.object_key,
            "KernelId": image.kernel_id, "RamdiskId": image.ramdisk_id,
            "Images": [x.describe() for x in (image, self.kernel, self.ramdisk) if x],
        }  # fmt: skip


def restore_image(
    bucket: str,
    object_key: str,
    *,
    name: str | None = None,
    endpoint_url: str | None = None,
) -> RestoreResult:
    """CreateRestoreImageTask: verify the whole object, then register its image under a new
    ID (and its kernel and ramdisk, if it carries them, under their content IDs). A name
    already in use is refused before any download; nothing is registered on any failure."""
    started = time.monotonic()
    target = parse_bucket(bucket, endpoint_url)
    registry = Registry()
    work = work_dir("restore")
    sinks: dict[str, _Sink] = {}
    where = f"{target.url}/{object_key}"
    try:
        paths_for = {
            DISK_MEMBER: work / "disk.raw",
            KERNEL_MEMBER: work / "kernel",
            RAMDISK_MEMBER: work / "ramdisk",
        }

        def on_member(m: sparsetar.Member) -> _Sink:
            if m.name in sinks:
                raise BadInput(f"{where}: member {m.name} appears twice")
            if m.name not in (META_MEMBER, TRAILER_MEMBER, *paths_for):
                raise BadInput(f"{where}: unexpected member {m.name!r}")
            if m.name != META_MEMBER and META_MEMBER not in sinks:
                raise BadInput(f"{where}: not an amilab stored image (no {META_MEMBER} first)")
            sinks[m.name] = _Sink(paths_for.get(m.name))
            return sinks[m.name]

        gunzip = transfer.GunzipStage(where, strict=True)
        reader = sparsetar.TarReader(on_member)
        checked_name = [False]

        def sink(plain: bytes) -> None:
            reader.feed(plain)
            if not checked_name[0] and META_MEMBER in sinks and DISK_MEMBER in sinks:
                # the metadata is whole once the next member began: refuse a taken name now
                checked_name[0] = True
                meta = _json(sinks[META_MEMBER].mem, where)
                check_name_free(registry, name or meta["Image"]["name"])

        try:
            if name:
                check_name_free(registry, name)
            # the worker downloads and inflates; this thread parses, hashes and writes
            download = transfer.threaded(target.reader(object_key))
            transfer.pipe(transfer.decompressed(download, gunzip), sink)
            gunzip.close()
            reader.close()
        finally:
            for s in sinks.values():
                s.close()
        if META_MEMBER not in sinks or TRAILER_MEMBER not in sinks:
            raise BadInput(f"{where}: object ends early (no {TRAILER_MEMBER}; truncated)")
        meta = _json(sinks[META_MEMBER].mem, where)
        trailer = _json(sinks[TRAILER_MEMBER].mem, where)
        if meta.get("Format") != FORMAT or trailer.get("Format") != FORMAT:
            raise BadInput(f"{where}: format {meta.get('Format')!r} is not {FORMAT}")
        listed = trailer.get("Members", {})
        for mname, s in sinks.items():
            if mname == TRAILER_MEMBER:
                continue
            want = listed.get(mname)
            if not want or want["SHA256"] != s.sha256.hexdigest() or want["Size"] != s.size:
                raise BadInput(f"{where}: member {mname} does not match its digest (corrupt)")
        if set(listed) != set(sinks) - {TRAILER_MEMBER}:
            raise BadInput(f"{where}: members missing from the object")
        return _register_restored(registry, meta, work, name, object_key, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _json(data: bytes | bytearray, where: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(data))
    except ValueError as e:
        raise BadInput(f"{where}: metadata is not JSON (corrupt)") from e
    if not isinstance(value, dict):
        raise BadInput(f"{where}: metadata is not an object")
    return value


def _register_restored(
    registry: Registry,
    meta: dict[str, Any],
    work: Path,
    name: str | None,
    object_key: str,
    started: float,
) -> RestoreResult:
    src = record_from_dict(meta["Image"])  # an object stored before typed settings too
    disk = work / "disk.raw"
    digest = sparse_sha256(disk)
    if src.digest and digest != src.digest:
        raise BadInput(f"{object_key}: restored disk does not give the image's digest")
    result = RestoreResult(image=src, object_key=object_key)
    related: list[tuple[ImageRecord, Path, str, str]] = []
    for key, member, suffix in (
        ("Kernel", work / "kernel", ".vmlinuz"),
        ("Ramdisk", work / "ramdisk", ".initrd"),
    ):
        if meta.get(key):
            rec = record_from_dict(meta[key])
            got = file_sha256(member)
            if rec.digest not in (None, got):
                raise BadInput(f"{object_key}: {key.lower()} does not match its digest")
            related.append((rec, member, got, suffix))
    carried = {rec.image_id for rec, *_ in related}
    for ref in (src.kernel_id, src.ramdisk_id):
        if ref and ref not in carried and registry.get(ref) is None:
            raise BadInput(
                f"{ref} is not registered here and the object does not carry it "
                "(store with --with-kernel)"
            )
    # everything checked: now move into the artifact store and register
    for rec, member, got, suffix in related:
        stored = store_artifact(member, got, suffix)
        kept = registry.register([factory.stored_at(rec, str(stored))])[0]
        if kept.image_type == "kernel":
            result.kernel = kept
        else:
            result.ramdisk = kept
    stored_disk = str(store_artifact(disk, digest, ".raw"))
    image = factory.reregistered(
        src,
        name or src.name,
        {"restored_from": object_key},
        digest=digest,
        locations={"raw": stored_disk},
        extra={"source_image_id": src.image_id, "restored_from": object_key},
    )
    result.image = registry.register_new(image)
    result.seconds = time.monotonic() - started
    return result


# ------------------------------------------------------------------ single files

FILE_MEMBER = "file"


def put_file(target: Target, key: str, path: Path, metadata: dict[str, str]) -> int:
    """One file (a disk, a kernel, a ramdisk) as an object of its own, in the same stream as
    an image's (gzip of a sparse tar with the digests trailer): the matrix's fleet moves
    artifacts this way. Returns the bytes stored."""
    writer = target.writer(key, {**metadata, "amilab-format": FORMAT})
    try:
        tar = transfer.threaded(_tar([_Member(FILE_MEMBER, path)], lambda _: None, [0]))
        transfer.pipe(transfer.compressed(tar, lambda _: None), writer.write)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def get_file(target: Target, key: str, dest: Path) -> None:
    """The file of a `put_file` object to `dest` (holes kept), checked against the object's
    trailer; BadInput for a corrupt, truncated or foreign object."""
    where = f"{target.url}/{key}"
    sinks: dict[str, _Sink] = {}

    def on_member(m: sparsetar.Member) -> _Sink:
        if m.name in sinks or m.name not in (FILE_MEMBER, TRAILER_MEMBER):
            raise BadInput(f"{where}: unexpected member {m.name!r}")
        sinks[m.name] = _Sink(dest if m.name == FILE_MEMBER else None)
        return sinks[m.name]

    gunzip = transfer.GunzipStage(where, strict=True)
    reader = sparsetar.TarReader(on_member)
    try:
        download = transfer.threaded(target.reader(key))
        transfer.pipe(transfer.decompressed(download, gunzip), reader.feed)
        gunzip.close()
        reader.close()
    finally:
        for s in sinks.values():
            s.close()
    if FILE_MEMBER not in sinks or TRAILER_MEMBER not in sinks:
        raise BadInput(f"{where}: object ends early (truncated)")
    want = _json(sinks[TRAILER_MEMBER].mem, where).get("Members", {}).get(FILE_MEMBER) or {}
    got = sinks[FILE_MEMBER]
    if want.get("SHA256") != got.sha256.hexdigest() or want.get("Size") != got.size:
        raise BadInput(f"{where}: the file does not match its digest (corrupt)")
