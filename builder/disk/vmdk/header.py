"""The hosted sparse extent header (VMDK version 1-3) and streamOptimized markers.

Layouts from VMware's "Virtual Disk Format 5.0" specification. Every field read from a file
is checked against the file's size before it is used, so a hostile header can neither point
a read past the end of the file nor make a table larger than the file could hold.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from builder.errors import BadInput

SECTOR = 512
MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
GD_AT_END = 0xFFFFFFFFFFFFFFFF

FLAG_VALID_NEWLINE = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
_KNOWN_FLAGS = (
    FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GT | FLAG_ZERO_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS
)

COMPRESS_NONE = 0
COMPRESS_DEFLATE = 1

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# Bounds: VMware writes 128-sector grains and 512-entry tables; the limits leave room for
# every writer seen in the wild while keeping one grain and one table small in memory.
MIN_GRAIN_SECTORS = 8
MAX_GRAIN_SECTORS = 2048
MAX_GTES_PER_GT = 512
MAX_CAPACITY_SECTORS = 1 << 37  # 64 TiB, above VMFS's 62 TiB limit
MAX_DESCRIPTOR_SECTORS = 2048  # 1 MiB

# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize,
# numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown, 4 newline-test characters,
# compressAlgorithm, padding.
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH433x")
_NEWLINE_TEST = b"\n \r\n"
_MARKER = struct.Struct("<QII")
assert _HEADER.size == SECTOR


@dataclass(frozen=True)
class SparseHeader:
    version: int
    flags: int
    capacity: int  # sectors
    grain_sectors: int
    descriptor_offset: int
    descriptor_sectors: int
    gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead: int
    compress_algorithm: int
    unclean_shutdown: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def markers(self) -> bool:
        return bool(self.flags & FLAG_MARKERS)

    @property
    def grain_bytes(self) -> int:
        return self.grain_sectors * SECTOR

    @property
    def num_grains(self) -> int:
        return -(-self.capacity // self.grain_sectors)

    @property
    def num_gts(self) -> int:
        return -(-self.num_grains // self.gtes_per_gt)

    @property
    def gt_bytes(self) -> int:
        return self.gtes_per_gt * 4

    @property
    def gd_bytes(self) -> int:
        return self.num_gts * 4

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.version,
            self.flags,
            self.capacity,
            self.grain_sectors,
            self.descriptor_offset,
            self.descriptor_sectors,
            self.gtes_per_gt,
            self.rgd_offset,
            self.gd_offset,
            self.overhead,
            self.unclean_shutdown,
            _NEWLINE_TEST,
            self.compress_algorithm,
        )

    def with_gd(self, gd_offset: int) -> SparseHeader:
        return replace(self, gd_offset=gd_offset)


def parse_header(data: bytes, where: str, file_size: int) -> SparseHeader:
    """Parse and bound-check a sparse extent header read from a file of `file_size` bytes."""
    if len(data) < SECTOR:
        raise BadInput(f"{where}: header: truncated ({len(data)} of {SECTOR} bytes)")
    (
        magic,
        version,
        flags,
        capacity,
        grain,
        desc_off,
        desc_size,
        gtes,
        rgd,
        gd,
        overhead,
        unclean,
        newline,
        algo,
    ) = _HEADER.unpack_from(data)
    if magic == COWD_MAGIC:
        raise BadInput(f"{where}: header.magic: COWD (vmfsSparse/ESX 2 delta) is not supported")
    if magic != MAGIC:
        raise BadInput(f"{where}: header.magic: {magic!r} is not a VMDK sparse extent (KDMV)")
    if version not in (1, 2, 3):
        raise BadInput(f"{where}: header.version: {version} (1, 2 or 3 expected)")
    if flags & ~_KNOWN_FLAGS:
        raise BadInput(f"{where}: header.flags: unknown bits {flags & ~_KNOWN_FLAGS:#x}")
    if flags & FLAG_VALID_NEWLINE and newline != _NEWLINE_TEST:
        # The four characters exist to catch a file that went through a text-mode transfer.
        raise BadInput(f"{where}: header.newline: damaged by a text-mode transfer")
    h = SparseHeader(
        version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, overhead, algo,
        unclean,
    )
    _check_ranges(h, where, file_size)
    return h


def _check_ranges(h: SparseHeader, where: str, file_size: int) -> None:
    if h.capacity == 0:
        raise BadInput(f"{where}: header.capacity: 0 sectors")
    if h.capacity > MAX_CAPACITY_SECTORS:
        raise BadInput(
            f"{where}: header.capacity: {h.capacity} sectors is over the "
            f"{MAX_CAPACITY_SECTORS} sector (64 TiB) limit"
        )
    g = h.grain_sectors
    if g < MIN_GRAIN_SECTORS or g > MAX_GRAIN_SECTORS or g & (g - 1):
        raise BadInput(
            f"{where}: header.grainSize: {g} sectors (a power of two from "
            f"{MIN_GRAIN_SECTORS} to {MAX_GRAIN_SECTORS} expected)"
        )
    if not 1 <= h.gtes_per_gt <= MAX_GTES_PER_GT:
        raise BadInput(
            f"{where}: header.numGTEsPerGT: {h.gtes_per_gt} (1 to {MAX_GTES_PER_GT} expected)"
        )
    if h.compress_algorithm not in (COMPRESS_NONE, COMPRESS_DEFLATE):
        raise BadInput(f"{where}: header.compressAlgorithm: {h.compress_algorithm} is unknown")
    if h.compressed and h.compress_algorithm != COMPRESS_DEFLATE:
        raise BadInput(f"{where}: header.compressAlgorithm: compressed grains need deflate (1)")
    if h.compressed and not h.markers:
        raise BadInput(f"{where}: header.flags: compressed grains without markers")
    if h.descriptor_offset:
        if not 1 <= h.descriptor_sectors <= MAX_DESCRIPTOR_SECTORS:
            raise BadInput(
                f"{where}: header.descriptorSize: {h.descriptor_sectors} sectors "
                f"(1 to {MAX_DESCRIPTOR_SECTORS} expected)"
            )
        check_span(where, "header.descriptorOffset", h.descriptor_offset * SECTOR,
                   h.descriptor_sectors * SECTOR, file_size)
    if h.gd_offset == GD_AT_END:
        if not (h.compressed and h.markers):
            raise BadInput(f"{where}: header.gdOffset: at the end, but not a stream")
    elif h.gd_offset == 0:
        raise BadInput(f"{where}: header.gdOffset: 0 (no grain directory)")
    else:
        check_span(where, "header.gdOffset", h.gd_offset * SECTOR, h.gd_bytes, file_size)


def check_span(where: str, field: str, offset: int, length: int, file_size: int) -> None:
    if offset < 0 or offset + length > file_size:
        raise BadInput(
            f"{where}: {field}: bytes {offset}..{offset + length} are past the end of "
            f"the file ({file_size} bytes)"
        )


@dataclass(frozen=True)
class Marker:
    value: int  # sectors of metadata that follow, or a grain's LBA
    size: int  # 0 for metadata markers, a grain's compressed size otherwise
    type: int  # only meaningful when size == 0


def parse_marker(data: bytes) -> Marker:
    return Marker(*_MARKER.unpack_from(data))


def pack_marker(value: int, size: int, type_: int) -> bytes:
    return _MARKER.pack(value, size, type_).ljust(SECTOR, b"\0")


GRAIN_MARKER = struct.Struct("<QI")
