"""Extents: one class per kind of VMDK extent behind one interface.

An extent lists the chunks of the disk it stores (`chunks()`) and reads one back as the
bytes the guest sees (`read()`). Listing touches only metadata; reading inflates. Both
check every offset against the file's size, and the number of chunks listed is bounded by
the file's size, so the work a hostile file can cause is proportional to its size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from builder.disk.vmdk import codec
from builder.disk.vmdk.header import (
    FLAG_ZERO_GRAIN,
    GD_AT_END,
    GRAIN_MARKER,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    SECTOR,
    SparseHeader,
    check_span,
    parse_header,
    parse_marker,
)
from builder.disk.vmdk.safefile import pread_exact
from builder.errors import BadInput

FLAT_CHUNK = 1 << 20


@dataclass(frozen=True)
class Chunk:
    offset: int  # bytes into the extent
    length: int  # bytes of the disk it covers
    file_offset: int  # where its bytes are stored
    stored: int  # bytes stored (the compressed size for a compressed grain)
    compressed: bool


class Extent:
    """A run of `sectors` sectors of the disk, stored in some way in one file (or none)."""

    kind: str = ""
    sectors: int = 0
    where: str = ""

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError

    def read(self, chunk: Chunk) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; the image owns the descriptors it opened."""


class ZeroExtent(Extent):
    kind = "zero"

    def __init__(self, sectors: int, where: str) -> None:
        self.sectors = sectors
        self.where = where

    def chunks(self) -> Iterator[Chunk]:
        return iter(())


class FlatExtent(Extent):
    """Raw bytes at an offset in a file (FLAT and VMFS extents)."""

    kind = "flat"

    def __init__(self, fd: int, sectors: int, start_sector: int, where: str) -> None:
        self.fd, self.sectors, self.where = fd, sectors, where
        self.start = start_sector * SECTOR
        size = os.fstat(fd).st_size
        check_span(where, "extent size", self.start, self.size, size)

    def chunks(self) -> Iterator[Chunk]:
        end = self.start + self.size
        pos = self.start
        while pos < end:
            # Holes read as zeros: skip them rather than read gigabytes of nothing.
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:
                return
            if data >= end:
                return
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            data -= (data - self.start) % SECTOR
            while data < hole:
                n = min(FLAT_CHUNK - (data - self.start) % FLAT_CHUNK, hole - data)
                yield Chunk(data - self.start, n, data, n, False)
                data += n
            pos = hole

    def read(self, chunk: Chunk) -> bytes:
        return pread_exact(self.fd, chunk.length, chunk.file_offset, self.where, "flat data")

    def close(self) -> None:
        os.close(self.fd)


class SparseExtent(Extent):
    """A hosted sparse extent: monolithicSparse, twoGbMaxExtentSparse pieces, and the three
    streamOptimized layouts (GD in the header with markers as VMware writes; GD at the end
    with a footer as VirtualBox writes; no metadata markers as qemu-img writes)."""

    kind = "sparse"

    def __init__(self, fd: int, header: SparseHeader, where: str) -> None:
        self.fd, self.header, self.where = fd, header, where
        self.sectors = header.capacity
        self.file_size = os.fstat(fd).st_size
        self.footer: SparseHeader | None = None
        self.gd_offset = header.gd_offset
        if header.gd_offset == GD_AT_END:
            self.footer = self._read_footer()
            self.gd_offset = self.footer.gd_offset
        self.layout = self._layout()
        self.gd = self._read_table(self.gd_offset * SECTOR, header.num_gts, "grain directory")

    @classmethod
    def open(cls, fd: int, where: str) -> SparseExtent:
        size = os.fstat(fd).st_size
        head = os.pread(fd, SECTOR, 0)
        return cls(fd, parse_header(head, where, size), where)

    def _read_footer(self) -> SparseHeader:
        # VirtualBox (and VMware's streaming writers) end with: footer marker, footer (a
        # copy of the header holding the real gdOffset), end-of-stream marker.
        w, size = self.where, self.file_size
        if size < 4 * SECTOR or size % SECTOR:
            raise BadInput(f"{w}: footer: file too short or not whole sectors ({size} bytes)")
        eos = parse_marker(pread_exact(self.fd, 16, size - SECTOR, w, "end-of-stream marker"))
        if (eos.value, eos.size, eos.type) != (0, 0, MARKER_EOS):
            raise BadInput(f"{w}: end-of-stream marker: missing (truncated stream?)")
        fm = parse_marker(pread_exact(self.fd, 16, size - 3 * SECTOR, w, "footer marker"))
        if fm.size != 0 or fm.type != MARKER_FOOTER:
            raise BadInput(f"{w}: footer marker: missing (type {fm.type}, size {fm.size})")
        raw = pread_exact(self.fd, SECTOR, size - 2 * SECTOR, w, "footer")
        footer = parse_header(raw, f"{w} footer", size)
        h = self.header
        for name in ("capacity", "grain_sectors", "gtes_per_gt", "flags"):
            if getattr(footer, name) != getattr(h, name):
                raise BadInput(f"{w}: footer.{name}: differs from the header")
        if footer.gd_offset == GD_AT_END:
            raise BadInput(f"{w}: footer.gdOffset: no grain directory")
        return footer

    def _layout(self) -> str:
        h = self.header
        if not h.compressed:
            return "monolithicSparse"
        if self.footer is not None:
            return "streamOptimized (GD at the end with a footer, as VirtualBox writes)"
        m = parse_marker(os.pread(self.fd, 16, (self.gd_offset - 1) * SECTOR).ljust(16, b"\0"))
        if m.size == 0 and m.type == MARKER_GD:
            return "streamOptimized (GD in the header with markers, as VMware writes)"
        return "streamOptimized (no metadata markers, as qemu-img writes)"

    def _read_table(self, offset: int, entries: int, name: str) -> list[int]:
        check_span(self.where, name, offset, entries * 4, self.file_size)
        raw = pread_exact(self.fd, entries * 4, offset, self.where, name)
        return list(memoryview(raw).cast("I"))

    def chunks(self) -> Iterator[Chunk]:
        h, w = self.header, self.where
        grain_bytes = h.grain_bytes
        capacity = h.capacity * SECTOR
        zero_grain = h.flags & FLAG_ZERO_GRAIN and h.version >= 2
        # Each allocated table or grain occupies its own place in an honest file: a count
        # past what the file can hold means entries share data, the way to make a small
        # file cost unbounded work.
        max_gts = self.file_size // h.gt_bytes
        grain_room = SECTOR if h.compressed else grain_bytes
        max_grains = self.file_size // grain_room + 1
        gts = grains = 0
        for i, gt_sector in enumerate(self.gd):
            if gt_sector == 0:
                continue
            gts += 1
            if gts > max_gts:
                raise BadInput(f"{w}: grain directory: more tables than the file can hold")
            gt = self._read_table(gt_sector * SECTOR, h.gtes_per_gt, f"grain directory[{i}]")
            for j, gte in enumerate(gt):
                index = i * h.gtes_per_gt + j
                if gte == 0 or index >= h.num_grains or (gte == 1 and zero_grain):
                    continue
                grains += 1
                if grains > max_grains:
                    raise BadInput(f"{w}: grain tables: more grains than the file can hold")
                offset = index * grain_bytes
                length = min(grain_bytes, capacity - offset)
                if h.compressed:
                    yield self._compressed_chunk(gte, index, offset, length)
                else:
                    check_span(w, f"grain table[{index}]", gte * SECTOR, length, self.file_size)
                    yield Chunk(offset, length, gte * SECTOR, length, False)

    def _compressed_chunk(self, sector: int, index: int, offset: int, length: int) -> Chunk:
        h, w = self.header, self.where
        field = f"grain table[{index}]"
        at = sector * SECTOR
        lba, size = GRAIN_MARKER.unpack(pread_exact(self.fd, 12, at, w, field))
        if lba != index * h.grain_sectors:
            raise BadInput(
                f"{w}: grain marker at byte {at}: LBA {lba}, but the grain table has it "
                f"at LBA {index * h.grain_sectors}"
            )
        # Deflate never grows data by more than a few bytes per 16 KiB block.
        if size == 0 or size > h.grain_bytes + h.grain_bytes // 64 + 1024:
            raise BadInput(f"{w}: grain marker at byte {at}: compressed size {size} is invalid")
        check_span(w, f"grain marker at byte {at}", at + 12, size, self.file_size)
        return Chunk(offset, length, at + 12, size, True)

    def read(self, chunk: Chunk) -> bytes:
        data = pread_exact(self.fd, chunk.stored, chunk.file_offset, self.where, "grain")
        if not chunk.compressed:
            return data
        try:
            out = codec.inflate(data, self.header.grain_bytes)
        except codec.InflateError as e:
            raise BadInput(
                f"{self.where}: grain at LBA {chunk.offset // SECTOR}: {e} "
                f"(grain size {self.header.grain_bytes})"
            ) from None
        if len(out) < chunk.length:
            raise BadInput(
                f"{self.where}: grain at LBA {chunk.offset // SECTOR}: inflates to "
                f"{len(out)} bytes, short of {chunk.length}"
            )
        return out[: chunk.length] if len(out) != chunk.length else out

    def close(self) -> None:
        os.close(self.fd)
