"""Where stored objects live: a directory or an S3 bucket (with a key prefix), each
written through a writer that makes the object appear only when whole and checks that what
arrived is what was sent. Stored images, bundles and the matrix's artifacts all go through
these.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from builder.errors import BadInput, EnvironmentProblem

S3_PART_SIZE = 16 << 20  # multipart upload part size (S3's minimum is 5 MiB)


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
