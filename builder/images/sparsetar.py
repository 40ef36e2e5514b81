"""A streaming tar writer and reader for disk images, in GNU tar's format.

Why not `tarfile`: ec2-bundle-image runs `tar --sparse`, so a bundle's tar stream holds the
disk as an old-GNU sparse member ('S'), and its SHA1 is taken over that exact stream. tarfile
reads that format but cannot write it, and it would read a 2 GiB sparse disk as 2 GiB of
zeros. Here only the data extents (SEEK_DATA/SEEK_HOLE) are read, the header matches what
GNU tar 1.34 writes byte for byte, and extraction seeks over holes so the restored disk is
sparse again. Regular members ('0') and GNU long names ('L') are handled too; anything else
is refused, as unbundling must restore exactly one image file and nothing else.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import BadInput

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default blocking factor pads the archive to this
_GNU_MAGIC = b"ustar  \x00"
_HEADER_SPARSE = 4  # sparse entries in the main header
_EXT_SPARSE = 21  # in each extension block
_READ_CHUNK = 4 << 20


def _num(value: int, width: int) -> bytes:
    """A numeric field: octal with a NUL, or GNU's base-256 when octal does not fit."""
    digits = width - 1
    if value < 8**digits:
        return b"%0*o\x00" % (digits, value)
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _parse_num(field_: bytes) -> int:
    if field_ and field_[0] & 0x80:  # base-256
        return int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
    text = field_.split(b"\x00", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as e:
        raise BadInput(f"tar stream: bad numeric field {field_!r}") from e


def _sparse_entry(block: bytes, at: int) -> tuple[int, int]:
    return _parse_num(block[at : at + 12]), _parse_num(block[at + 12 : at + 24])


def _checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)


def _header(
    name: bytes,
    typeflag: bytes,
    size: int,
    mode: int,
    mtime: int,
    sparse: list[tuple[int, int]] | None = None,
    realsize: int = 0,
) -> bytearray:
    h = bytearray(BLOCK)
    h[0 : len(name)] = name
    h[100:108] = _num(mode, 8)
    h[108:116] = _num(0, 8)
    h[116:124] = _num(0, 8)
    h[124:136] = _num(size, 12)
    h[136:148] = _num(mtime, 12)
    h[156:157] = typeflag
    h[257:265] = _GNU_MAGIC
    h[265:269] = b"root"
    h[297:301] = b"root"
    if sparse is not None:
        for i, (off, n) in enumerate(sparse[:_HEADER_SPARSE]):
            h[386 + 24 * i : 398 + 24 * i] = _num(off, 12)
            h[398 + 24 * i : 410 + 24 * i] = _num(n, 12)
        h[482] = 1 if len(sparse) > _HEADER_SPARSE else 0
        h[483:495] = _num(realsize, 12)
    _checksum(h)
    return h


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the file's data regions; the whole file where holes are unknown."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == 6:  # ENXIO: only a hole remains
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end - start))
            pos = end
    except OSError:  # the filesystem cannot tell: treat it all as data
        return [(0, size)] if size else []
    return extents


def _pad(n: int) -> bytes:
    return bytes(-n % BLOCK)


def file_member(
    path: Path,
    arcname: str,
    progress: Callable[[int], None] | None = None,
    on_data: Callable[[bytes], None] | None = None,
) -> Iterator[bytes]:
    """The tar member for one file: headers, then its data extents, padded to a block.

    A file with holes becomes an old-GNU sparse member exactly as `tar --sparse` writes it
    (the map always ends with an (end-of-file, 0) entry); one without stays a plain member.
    `progress` is told how many logical bytes (holes included) have been covered so far;
    `on_data` sees the member's data (not its headers or padding), e.g. for a digest.
    """
    name = arcname.encode()
    st = os.stat(path)
    size = st.st_size
    mode = stat.S_IMODE(st.st_mode)
    mtime = int(st.st_mtime)
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        extents = data_extents(fd, size)
        sparse = not (extents == [(0, size)] or (size == 0 and not extents))
        if len(name) >= 100:  # GNU long name: the name goes in a member of its own
            longname = name + b"\x00"
            yield bytes(_header(b"././@LongLink", b"L", len(longname), 0o644, 0))
            yield longname + _pad(len(longname))
            name = name[:100]
        stored = sum(n for _, n in extents)
        if sparse:
            smap = [*extents, (size, 0)]
            yield bytes(_header(name, b"S", stored, mode, mtime, smap, size))
            rest = smap[_HEADER_SPARSE:]
            while rest:
                ext = bytearray(BLOCK)
                for i, (off, n) in enumerate(rest[:_EXT_SPARSE]):
                    ext[24 * i : 24 * i + 12] = _num(off, 12)
                    ext[24 * i + 12 : 24 * i + 24] = _num(n, 12)
                rest = rest[_EXT_SPARSE:]
                ext[504] = 1 if rest else 0
                yield bytes(ext)
        else:
            yield bytes(_header(name, b"0", size, mode, mtime))
        for off, n in extents:
            end = off + n
            while off < end:
                chunk = os.pread(fd, min(_READ_CHUNK, end - off), off)
                if not chunk:
                    raise BadInput(f"{path}: shrank while being read")
                off += len(chunk)
                if on_data:
                    on_data(chunk)
                yield chunk
                if progress:
                    progress(off)
        if progress:
            progress(size)
        yield _pad(stored)


def bytes_member(name: str, data: bytes, mtime: int = 0) -> bytes:
    return bytes(_header(name.encode(), b"0", len(data), 0o644, mtime)) + data + _pad(len(data))


def end_of_archive(written: int) -> bytes:
    """Two zero blocks, then zeros up to GNU tar's 10 KiB record, as `tar -c` ends."""
    tail = 2 * BLOCK
    return bytes(tail + (-(written + tail) % RECORD))


@dataclass
class Member:
    name: str
    size: int  # logical size (a sparse member's real size)
    mode: int
    mtime: int
    sparse: list[tuple[int, int]] | None = None
    stored: int = 0  # bytes of data that follow the headers
    extra: dict[str, str] = field(default_factory=dict)


class TarReader:
    """Parses a tar stream fed to it in arbitrary chunks (push style, so it can sit at the
    end of a decrypt/decompress pipeline). Each member's data goes to `on_member(member)`,
    which returns a writer `(offset, bytes) -> None`, or None to refuse the member."""

    def __init__(self, on_member: Callable[[Member], Callable[[int, bytes], None]]) -> None:
        self._on_member = on_member
        self._buf = bytearray()
        self._state = "header"
        self._member: Member | None = None
        self._writer: Callable[[int, bytes], None] | None = None
        self._remaining = 0  # data bytes of the current member still to come
        self._segments: list[tuple[int, int]] = []
        self._pending_ext: list[tuple[int, int]] = []
        self._header: bytes = b""
        self._longname: str | None = None
        self.members: list[Member] = []
        self.ended = False

    def feed(self, data: bytes | memoryview) -> None:
        # Member data goes to the writer as slices of what was fed, never copied: only
        # header blocks that arrive split between two feeds are buffered.
        view = memoryview(data)
        while view:
            if self.ended:
                if any(view):
                    raise BadInput("tar stream: data after the end-of-archive marker")
                return
            if self._state == "data":
                view = view[self._data(view) :]
                continue
            if self._state == "padding":  # the rest of the member's last block
                take = min(self._remaining, len(view))
                self._remaining -= take
                view = view[take:]
                if not self._remaining:
                    self._state = "header"
                continue
            need = BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) < BLOCK:
                return
            block = bytes(self._buf)
            self._buf.clear()
            if self._state == "header":
                self._parse_header(block)
            elif self._state == "sparse-ext":
                self._parse_ext(block)
            elif self._state == "longname":
                self._longname_block(block)

    def _parse_header(self, h: bytes) -> None:
        if not any(h):
            self._state = "end"
            self.ended = True
            return
        stored_sum = _parse_num(h[148:156])
        if stored_sum != sum(h[:148]) + 8 * 32 + sum(h[156:]):
            raise BadInput("tar stream: header checksum mismatch (corrupt data)")
        typeflag = h[156:157]
        size = _parse_num(h[124:136])
        if typeflag == b"L":  # GNU long name: the next member's name, in data blocks
            self._longname_buf = bytearray()
            self._remaining = size
            self._state = "longname"
            return
        name = self._longname or h[:100].split(b"\x00", 1)[0].decode(errors="replace")
        self._longname = None
        mode, mtime = _parse_num(h[100:108]), _parse_num(h[136:148])
        if typeflag in (b"0", b"\x00"):
            self._start(Member(name, size, mode, mtime, None, size), [(0, size)])
        elif typeflag == b"S":
            entries = [_sparse_entry(h, 386 + 24 * i) for i in range(_HEADER_SPARSE)]
            self._pending_ext = [e for e in entries if e != (0, 0)]
            self._pending_member = Member(name, _parse_num(h[483:495]), mode, mtime, None, size)
            if h[482]:
                self._state = "sparse-ext"
            else:
                self._finish_sparse()
        else:
            raise BadInput(f"tar stream: member {name!r} has type {typeflag!r}, not a file")

    def _longname_block(self, block: bytes) -> None:
        self._longname_buf += block[: max(0, min(BLOCK, self._remaining))]
        self._remaining -= BLOCK
        if self._remaining <= 0:
            self._longname = self._longname_buf.split(b"\x00", 1)[0].decode(errors="replace")
            self._state = "header"

    def _parse_ext(self, block: bytes) -> None:
        for i in range(_EXT_SPARSE):
            entry = _sparse_entry(block, 24 * i)
            if entry != (0, 0):
                self._pending_ext.append(entry)
        if not block[504]:
            self._finish_sparse()

    def _finish_sparse(self) -> None:
        m = self._pending_member
        segments = [(o, n) for o, n in self._pending_ext if n]
        if sum(n for _, n in segments) != m.stored or any(o + n > m.size for o, n in segments):
            raise BadInput(f"tar stream: sparse map of {m.name!r} does not match its size")
        m.sparse = segments
        self._start(m, segments)

    def _start(self, m: Member, segments: list[tuple[int, int]]) -> None:
        self.members.append(m)
        self._member = m
        self._writer = self._on_member(m)
        self._segments = list(segments)
        self._remaining = m.stored
        self._state = "data" if m.stored else "header"
        if not m.stored:
            self._writer(m.size, b"")

    def _data(self, view: memoryview) -> int:
        """Hands the writer as much of `view` as the member's data still needs; returns
        how many bytes it used."""
        assert self._writer is not None and self._member is not None
        used = 0
        while used < len(view) and self._segments:
            off, n = self._segments[0]
            take = min(n, len(view) - used)
            self._writer(off, view[used : used + take])
            used += take
            self._remaining -= take
            if take == n:
                self._segments.pop(0)
            else:
                self._segments[0] = (off + take, n - take)
        if not self._segments:
            self._writer(self._member.size, b"")  # end of member: its logical size
            pad = -self._member.stored % BLOCK
            self._remaining = pad
            self._state = "padding" if pad else "header"
        return used

    def close(self) -> None:
        if not self.ended or self._state != "end":
            raise BadInput("tar stream ends early (truncated)")


class SparseFileWriter:
    """Writes a member's data at its offsets, skipping runs of zeros so the file stays
    sparse (as `cp --sparse=always` does), and sets the final size when told."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._zero = bytes(1 << 16)

    def __call__(self, offset: int, data: bytes) -> None:
        if not data:
            self._f.truncate(offset)
            return
        step = len(self._zero)
        fd = self._f.fileno()
        run_start = -1  # start of the current run of non-zero pieces, written in one go
        pos = 0
        for pos in range(0, len(data), step):
            if data[pos : pos + step] == self._zero[: min(step, len(data) - pos)]:
                if run_start >= 0:
                    os.pwrite(fd, data[run_start:pos], offset + run_start)
                    run_start = -1
            elif run_start < 0:
                run_start = pos
        if run_start >= 0:
            os.pwrite(fd, data[run_start:], offset + run_start)

    def close(self) -> None:
        self._f.close()
