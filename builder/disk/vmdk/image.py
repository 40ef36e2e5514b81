"""A whole VMDK disk: its descriptor and extents, validated before any data is read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.disk.vmdk.descriptor import (
    MAX_DESCRIPTOR_BYTES,
    Descriptor,
    looks_like_descriptor,
    parse_descriptor,
)
from builder.disk.vmdk.extents import Chunk, Extent, FlatExtent, SparseExtent, ZeroExtent
from builder.disk.vmdk.header import (
    COWD_MAGIC,
    MAGIC,
    MAX_CAPACITY_SECTORS,
    SECTOR,
    parse_header,
)
from builder.disk.vmdk.safefile import open_regular, pread_exact, resolve_extent
from builder.errors import BadInput

_SPARSE_TYPES = {"monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized"}
_FLAT_TYPES = {"monolithicFlat", "twoGbMaxExtentFlat", "vmfs", "vmfsThin"}


@dataclass
class VmdkImage:
    """A validated VMDK: `capacity` in bytes, `extents` with their start offsets."""

    path: Path
    create_type: str
    layout: str
    extents: list[tuple[int, Extent]]
    descriptor: Descriptor | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return sum(e.size for _, e in self.extents)

    @property
    def adapter_type(self) -> str | None:
        return self.descriptor.ddb.get("ddb.adapterType") if self.descriptor else None

    def chunks(self) -> Iterator[tuple[int, Extent, Chunk]]:
        """Every stored chunk in disk order: (offset in the disk, its extent, the chunk)."""
        for start, extent in self.extents:
            for chunk in extent.chunks():
                yield start + chunk.offset, extent, chunk

    def verify(self) -> int:
        """Read and inflate every chunk (the deep check); returns the bytes stored."""
        total = 0
        for _, extent, chunk in self.chunks():
            extent.read(chunk)
            total += chunk.length
        return total

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "createType": self.create_type,
            "layout": self.layout,
            "capacity": self.capacity,
            "adapterType": self.adapter_type,
            "extents": [
                {"start": start, "size": e.size, "kind": e.kind, "file": e.where}
                for start, e in self.extents
            ],
        }

    def close(self) -> None:
        for _, extent in self.extents:
            extent.close()
        self.extents = []

    def __enter__(self) -> VmdkImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sniff(path: Path) -> bool:
    """Whether a file looks like a VMDK (a sparse extent or a descriptor)."""
    try:
        with open(path, "rb") as f:
            head = f.read(SECTOR)
    except OSError:
        return False
    return head[:4] in (MAGIC, COWD_MAGIC) or looks_like_descriptor(head)


def open_vmdk(path: Path | str) -> VmdkImage:
    """Open and validate a VMDK (raises BadInput naming the field and file)."""
    path = Path(path)
    where = path.name
    fd = open_regular(path, where)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, SECTOR, 0)
        if head[:4] in (MAGIC, COWD_MAGIC):
            image = _open_sparse_file(path, fd, size, where)
            fd = -1  # the image owns it now
            return image
        if not looks_like_descriptor(head):
            raise BadInput(f"{where}: not a VMDK (no KDMV header and no descriptor)")
        if size > MAX_DESCRIPTOR_BYTES:
            raise BadInput(f"{where}: descriptor: larger than {MAX_DESCRIPTOR_BYTES} bytes")
        text = pread_exact(fd, size, 0, where, "descriptor")
    finally:
        if fd >= 0:
            os.close(fd)
    return _open_descriptor_file(path, parse_descriptor(text, where))


def _open_sparse_file(path: Path, fd: int, size: int, where: str) -> VmdkImage:
    header = parse_header(os.pread(fd, SECTOR, 0), where, size)
    descriptor = None
    if header.descriptor_offset:
        raw = pread_exact(
            fd,
            header.descriptor_sectors * SECTOR,
            header.descriptor_offset * SECTOR,
            where,
            "header.descriptorOffset",
        )
        descriptor = parse_descriptor(raw, f"{where} (embedded descriptor)")
        _check_embedded(descriptor, header.capacity, where)
    extent = SparseExtent(fd, header, where)
    if descriptor:
        create_type = descriptor.create_type
    else:
        create_type = "streamOptimized" if header.compressed else "monolithicSparse"
    return VmdkImage(path, create_type, extent.layout, [(0, extent)], descriptor, [path])


def _check_embedded(d: Descriptor, capacity: int, where: str) -> None:
    # qemu and VMware use the header for the data and ignore the embedded extent's file
    # name (VMware tools often leave the name the file was created under), so only the
    # sizes have to agree.
    if d.create_type not in ("monolithicSparse", "streamOptimized"):
        raise BadInput(
            f"{where}: descriptor.createType: {d.create_type} in an embedded descriptor"
        )
    if len(d.extents) != 1 or d.extents[0].type != "SPARSE":
        raise BadInput(f"{where}: descriptor: an embedded descriptor has one SPARSE extent")
    if d.extents[0].sectors != capacity:
        raise BadInput(
            f"{where}: descriptor: extent size {d.extents[0].sectors} sectors does not add "
            f"up to the header's capacity {capacity}"
        )


def _open_descriptor_file(path: Path, d: Descriptor) -> VmdkImage:
    where = path.name
    allowed = {"SPARSE", "ZERO"} if d.create_type in _SPARSE_TYPES else {"FLAT", "VMFS", "ZERO"}
    extents: list[tuple[int, Extent]] = []
    files = [path]
    start = 0
    try:
        for line in d.extents:
            lw = f"{where}:{line.line}"
            if line.type not in allowed:
                raise BadInput(
                    f"{lw}: extent type: {line.type} in a {d.create_type} descriptor"
                )
            extent = _open_extent(path.parent, line, lw)
            extents.append((start, extent))
            start += extent.size
            if line.filename:
                files.append(path.parent / line.filename)
    except BaseException:
        for _, e in extents:
            e.close()
        raise
    if start // SECTOR > MAX_CAPACITY_SECTORS:  # pragma: no cover - checked per line
        raise BadInput(f"{where}: descriptor: capacity over the limit")
    layout = d.create_type
    sparse = [e for _, e in extents if isinstance(e, SparseExtent)]
    if sparse and d.create_type == "streamOptimized":
        layout = sparse[0].layout
    return VmdkImage(path, d.create_type, layout, extents, d, files)


def _open_extent(base: Path, line: Any, where: str) -> Extent:
    if line.type == "ZERO":
        return ZeroExtent(line.sectors, where)
    target = resolve_extent(base, line.filename, where)
    name = f"{where} ({line.filename})"
    fd = open_regular(target, name)
    try:
        if line.type in ("FLAT", "VMFS"):
            return FlatExtent(fd, line.sectors, line.offset, name)
        extent = SparseExtent.open(fd, name)
    except BaseException:
        os.close(fd)
        raise
    if extent.sectors != line.sectors:
        extent.close()
        raise BadInput(
            f"{name}: extent size: {line.sectors} sectors in the descriptor but "
            f"{extent.sectors} in its header (extents do not add up to the capacity)"
        )
    return extent
