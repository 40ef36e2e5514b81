"""The stream a stored object holds: a gzip-compressed sparse tar whose last member,
`amilab-digests.json`, lists each member's size and SHA-256. The gzip CRC covers the whole
stream, the trailer each member. A stored image is several members (store.py); one file of
the matrix's fleet is a single one (put_file, get_file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BadInput
from builder.images import sparsetar, transfer
from builder.images.targets import Target

FORMAT = "amilab-store-image/1"
TRAILER_MEMBER = "amilab-digests.json"
FILE_MEMBER = "file"


@dataclass
class Member:
    name: str
    path: Path | None = None
    data: bytes | None = None
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0


def logical_size(m: Member) -> int:
    return m.path.stat().st_size if m.path else len(m.data or b"")


def tar_stream(
    members: list[Member], report: Callable[[int], None], done_before: list[int]
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


class Sink:
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


def json_object(data: bytes | bytearray, where: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(data))
    except ValueError as e:
        raise BadInput(f"{where}: metadata is not JSON (corrupt)") from e
    if not isinstance(value, dict):
        raise BadInput(f"{where}: metadata is not an object")
    return value


def put_file(target: Target, key: str, path: Path, metadata: dict[str, str]) -> int:
    """One file (a disk, a kernel, a ramdisk) as an object of its own, in the same stream as
    an image's (gzip of a sparse tar with the digests trailer): the matrix's fleet moves
    artifacts this way. Returns the bytes stored."""
    writer = target.writer(key, {**metadata, "amilab-format": FORMAT})
    try:
        tar = transfer.threaded(tar_stream([Member(FILE_MEMBER, path)], lambda _: None, [0]))
        transfer.pipe(transfer.compressed(tar, lambda _: None), writer.write)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def receive(
    target: Target,
    key: str,
    on_member: Callable[[sparsetar.Member], Sink],
    sinks: dict[str, Sink],
    after_feed: Callable[[], None] | None = None,
) -> None:
    """Download, inflate and parse one object, each member into the sink `on_member` makes
    for it (and keeps in `sinks`); `after_feed` runs after each piece is parsed, for checks
    that can refuse early. Every sink is closed at the end, whatever happened; checking
    what arrived against the trailer is the caller's."""
    gunzip = transfer.GunzipStage(f"{target.url}/{key}", strict=True)
    reader = sparsetar.TarReader(on_member)

    def feed(plain: bytes) -> None:
        reader.feed(plain)
        if after_feed is not None:
            after_feed()

    try:
        # the worker downloads and inflates; this thread parses, hashes and writes
        download = transfer.threaded(target.reader(key))
        transfer.pipe(transfer.decompressed(download, gunzip), feed)
        gunzip.close()
        reader.close()
    finally:
        for s in sinks.values():
            s.close()


def get_file(target: Target, key: str, dest: Path) -> None:
    """The file of a `put_file` object to `dest` (holes kept), checked against the object's
    trailer; BadInput for a corrupt, truncated or foreign object."""
    where = f"{target.url}/{key}"
    sinks: dict[str, Sink] = {}

    def on_member(m: sparsetar.Member) -> Sink:
        if m.name in sinks or m.name not in (FILE_MEMBER, TRAILER_MEMBER):
            raise BadInput(f"{where}: unexpected member {m.name!r}")
        sinks[m.name] = Sink(dest if m.name == FILE_MEMBER else None)
        return sinks[m.name]

    receive(target, key, on_member, sinks)
    if FILE_MEMBER not in sinks or TRAILER_MEMBER not in sinks:
        raise BadInput(f"{where}: object ends early (truncated)")
    want = json_object(sinks[TRAILER_MEMBER].mem, where).get("Members", {}).get(FILE_MEMBER) or {}
    got = sinks[FILE_MEMBER]
    if want.get("SHA256") != got.sha256.hexdigest() or want.get("Size") != got.size:
        raise BadInput(f"{where}: the file does not match its digest (corrupt)")
