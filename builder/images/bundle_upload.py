"""ec2-upload-bundle, and the way back for `register`: a bundle's parts and manifest into a
directory or an S3 bucket (`s3://bucket[/prefix]`), and a manifest's bundle fetched from S3.

Every part is checked against the manifest's SHA1 before it is sent, and the manifest goes
last, so a bucket that holds a manifest holds its whole bundle (an interrupted upload leaves
parts without a manifest, which nothing registers). ImageLocation is EC2's
`bucket/prefix/name.manifest.xml`; a directory's is the manifest's path.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BadInput
from builder.images.manifest import Manifest, parse_manifest
from builder.images.targets import DirectoryTarget, S3Target, parse_bucket


@dataclass
class Uploaded:
    location: str  # what `register` takes
    objects: list[str]

    def describe(self) -> dict[str, Any]:
        return {"ImageLocation": self.location, "Objects": self.objects}


def _checked_parts(manifest_path: Path, m: Manifest) -> list[Path]:
    src = manifest_path.parent
    out = []
    for part in m.parts:
        p = src / part.filename
        try:
            data = p.read_bytes()
        except OSError as e:
            raise BadInput(f"{p}: bundle part is missing ({e.strerror})") from None
        if hashlib.sha1(data).hexdigest() != part.digest:
            raise BadInput(f"{p}: SHA1 does not match the manifest (corrupt)")
        out.append(p)
    return out


def upload_bundle(manifest: Path, bucket: str, endpoint_url: str | None = None) -> Uploaded:
    manifest = manifest.resolve()
    m = parse_manifest(manifest)
    files = [*_checked_parts(manifest, m), manifest]  # the manifest last
    target = parse_bucket(bucket, endpoint_url)
    if isinstance(target, DirectoryTarget):
        target.root.mkdir(parents=True, exist_ok=True)
        for f in files:
            dest = target.root / f.name
            if dest.resolve() == f:
                continue  # already there
            tmp = dest.with_name(f".{f.name}.{secrets.token_hex(4)}.part")
            try:
                shutil.copyfile(f, tmp)
                os.rename(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        return Uploaded(str(target.root.resolve() / manifest.name), [f.name for f in files])
    assert isinstance(target, S3Target)
    keys = []
    for f in files:
        key = f"{target.prefix}/{f.name}" if target.prefix else f.name
        writer = target.writer(key, {})
        try:
            with open(f, "rb") as src:
                while chunk := src.read(4 << 20):
                    writer.write(chunk)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        keys.append(key)
    return Uploaded(f"{target.bucket}/{keys[-1]}", keys)


def fetch_bundle(location: str, work: Path, endpoint_url: str | None = None) -> Path:
    """`s3://bucket/key.manifest.xml` (or EC2's `bucket/key.manifest.xml` form given with
    s3://): the manifest and its parts downloaded into WORK; returns the manifest's path."""
    bucket, _, key = location.removeprefix("s3://").partition("/")
    if not bucket or not key.endswith(".manifest.xml"):
        raise BadInput(f"{location}: expected s3://BUCKET/PATH/NAME.manifest.xml")
    target = S3Target(bucket, "", endpoint_url)
    prefix = key.rpartition("/")[0]

    def download(k: str) -> Path:
        dest = work / k.rpartition("/")[2]
        with open(dest, "wb") as out:
            for chunk in target.reader(k):
                out.write(chunk)
        return dest

    manifest = download(key)
    m = parse_manifest(manifest)
    for part in m.parts:
        download(f"{prefix}/{part.filename}" if prefix else part.filename)
    return manifest
