"""streamOptimized output in VMware's layout, the one ESXi and AWS VM Import accept.

Layout (VMware "Virtual Disk Format 5.0", stream-optimized compressed sparse extents):

    header (version 3, compressed + markers, gdOffset of the GD below)
    embedded descriptor (createType="streamOptimized", RDONLY ... SPARSE)
    padding to the overhead (64 KiB)
    for each grain table's span of 512 grains:
        grain marker (LBA, compressed size) + zlib data, padded to a sector  (data grains only)
        GT marker + grain table
    GD marker + grain directory
    footer marker + footer (a copy of the header)
    end-of-stream marker

qemu-img writes neither the GT/GD/footer markers nor the footer; VMware's readers and AWS
expect them. Grains are compressed by all cores (libdeflate); all-zero grains are not
stored. Everything is written front to back in one pass; only the header and descriptor
are rewritten at the end, when the grain directory's place and the content ID are known.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.disk.vmdk import codec
from builder.disk.vmdk.descriptor import render_descriptor
from builder.disk.vmdk.header import (
    COMPRESS_DEFLATE,
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_VALID_NEWLINE,
    GD_AT_END,
    GRAIN_MARKER,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    SECTOR,
    SparseHeader,
    pack_marker,
)
from builder.disk.vmdk.parallel import ordered_map
from builder.disk.vmdk.rawio import RawSource

GRAIN_SECTORS = 128  # 64 KiB, what VMware writes
GTES_PER_GT = 512
DESCRIPTOR_SECTORS = 20  # VMware reserves 10 KiB for the descriptor
OVERHEAD_SECTORS = 128
_BATCH_GRAINS = 64  # 4 MiB of input per task


@dataclass(frozen=True)
class StreamStats:
    capacity: int
    data_grains: int
    zero_grains_skipped: int
    bytes_in: int
    bytes_out: int


def write_stream_optimized(
    raw: Path,
    out: Path,
    *,
    adapter_type: str = "lsilogic",
    name: str | None = None,
    level: int = codec.LEVEL,
    workers: int | None = None,
) -> StreamStats:
    """Write the raw disk `raw` as a streamOptimized VMDK at `out`; `name` is the file name
    its descriptor records (the final name when `out` is a temporary file)."""
    with RawSource(raw) as src:
        capacity = -(-src.size // SECTOR) * SECTOR
        header = SparseHeader(
            version=3,
            flags=FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity=capacity // SECTOR,
            grain_sectors=GRAIN_SECTORS,
            descriptor_offset=1,
            descriptor_sectors=DESCRIPTOR_SECTORS,
            gtes_per_gt=GTES_PER_GT,
            rgd_offset=0,
            gd_offset=GD_AT_END,
            overhead=OVERHEAD_SECTORS,
            compress_algorithm=COMPRESS_DEFLATE,
        )
        with open(out, "wb", buffering=8 << 20) as f:
            w = _StreamWriter(f, header)
            w.start()

            def compress(batch: tuple[int, int]) -> tuple[int, list[tuple[int, bytes]]]:
                first, count = batch
                gb = header.grain_bytes
                data = src.pread(count * gb, first * gb)
                view = memoryview(data)  # grains are compressed in place, never copied
                out = []
                for k in range(count):
                    if data.count(0, k * gb, (k + 1) * gb) != gb:
                        out.append((first + k, codec.compress(view[k * gb : (k + 1) * gb], level)))
                return count, out

            batches = _grain_batches(src, header.grain_bytes)
            for count, grains in ordered_map(compress, batches, workers):
                w.candidates += count
                for index, blob in grains:
                    w.grain(index, blob)
            w.finish(adapter_type, name or out.name)
            f.flush()
            os.fsync(f.fileno())
        return StreamStats(
            capacity=capacity,
            data_grains=w.data_grains,
            zero_grains_skipped=w.candidates - w.data_grains,
            bytes_in=src.size,
            bytes_out=out.stat().st_size,
        )


def _grain_batches(src: RawSource, grain_bytes: int) -> Iterator[tuple[int, int]]:
    for offset, length in src.data_runs(grain_bytes):
        first, count = offset // grain_bytes, length // grain_bytes
        while count:
            n = min(count, _BATCH_GRAINS - first % _BATCH_GRAINS)
            yield first, n
            first += n
            count -= n


class _StreamWriter:
    """Appends grains in LBA order and emits each grain table once its span is passed."""

    def __init__(self, f, header: SparseHeader) -> None:  # noqa: ANN001 - a binary file
        self.f = f
        self.h = header
        self.pos = 0  # bytes written
        self.gt_index = 0  # the grain table whose span is being filled
        self.gt = [0] * header.gtes_per_gt
        self.gd: list[int] = []
        self.data_grains = 0
        self.candidates = 0
        self.digest = hashlib.sha1(usedforsecurity=False)

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.pos += len(data)

    def _pad(self) -> None:
        if self.pos % SECTOR:
            self._write(b"\0" * (SECTOR - self.pos % SECTOR))

    def start(self) -> None:
        self._write(b"\0" * (OVERHEAD_SECTORS * SECTOR))  # header and descriptor come last

    def grain(self, index: int, blob: bytes) -> None:
        gt_index, slot = divmod(index, self.h.gtes_per_gt)
        while self.gt_index < gt_index:
            self._flush_gt()
        self.gt[slot] = self.pos // SECTOR
        self._write(GRAIN_MARKER.pack(index * self.h.grain_sectors, len(blob)))
        self._write(blob)
        self._pad()
        self.digest.update(blob)
        self.data_grains += 1

    def _flush_gt(self) -> None:
        # Every table is written, empty ones too, as VMware does: readers that expect a
        # table behind every directory entry find one.
        gt_sectors = self.h.gt_bytes // SECTOR
        self._write(pack_marker(gt_sectors, 0, MARKER_GT))
        self.gd.append(self.pos // SECTOR)
        self._write(_u32(self.gt))
        self.gt = [0] * self.h.gtes_per_gt
        self.gt_index += 1

    def finish(self, adapter_type: str, name: str) -> None:
        while self.gt_index < self.h.num_gts:
            self._flush_gt()
        gd_bytes = _u32(self.gd)
        gd_sectors = -(-len(gd_bytes) // SECTOR)
        self._write(pack_marker(gd_sectors, 0, MARKER_GD))
        gd_offset = self.pos // SECTOR
        self._write(gd_bytes)
        self._pad()
        header = self.h.with_gd(gd_offset)
        self._write(pack_marker(1, 0, MARKER_FOOTER))
        self._write(header.pack())
        self._write(pack_marker(0, 0, MARKER_EOS))
        self.f.flush()
        cid = int.from_bytes(self.digest.digest()[:4], "little") or 1
        descriptor = render_descriptor(
            "streamOptimized",
            [("RDONLY", self.h.capacity, "SPARSE", name)],
            cid,
            _ddb(self.h.capacity, adapter_type, self.digest.hexdigest()[:32]),
        ).encode()
        room = self.h.descriptor_sectors * SECTOR
        assert len(descriptor) <= room
        self.f.seek(0)
        self.f.write(header.pack())
        self.f.write(descriptor.ljust(room, b"\0"))
        self.f.seek(self.pos)


def _u32(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def _ddb(sectors: int, adapter_type: str, content_id: str) -> dict[str, str]:
    heads, per_track = (255, 63) if adapter_type != "ide" else (16, 63)
    cylinders = min(sectors // (heads * per_track), 65535)
    return {
        "ddb.adapterType": adapter_type,
        "ddb.geometry.cylinders": str(cylinders),
        "ddb.geometry.heads": str(heads),
        "ddb.geometry.sectors": str(per_track),
        "ddb.longContentID": content_id,
        "ddb.virtualHWVersion": "4",
    }
