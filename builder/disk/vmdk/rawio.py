"""Raw disks: reading the parts of a raw file that hold data, and writing a VMDK out as raw."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from builder.disk.vmdk.extents import Chunk, Extent
from builder.disk.vmdk.image import VmdkImage
from builder.disk.vmdk.parallel import ordered_map
from builder.errors import BadInput

_BATCH = 4 << 20


class RawSource:
    """A raw disk file; holes are never read (a 2 GiB image holding 400 MB reads 400 MB)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise BadInput(f"{path.name}: cannot open: {e.strerror}") from None
        self.size = os.fstat(self.fd).st_size

    def data_runs(self, align: int) -> Iterator[tuple[int, int]]:
        """(offset, length) runs that may hold data, widened to `align` boundaries."""
        pos = 0
        last_end = 0
        while pos < self.size:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                return
            hole = os.lseek(self.fd, data, os.SEEK_HOLE)
            start = max(data - data % align, last_end)
            end = min(-(-hole // align) * align, -(-self.size // align) * align)
            if end > start:
                yield start, end - start
                last_end = end
            pos = hole

    def pread(self, length: int, offset: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        return data.ljust(length, b"\0")  # the last grain past the end of the file

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> RawSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_raw(image: VmdkImage, out: Path, workers: int | None = None) -> int:
    """Write the disk as a sparse raw file; returns the bytes of data written.
    Chunks are inflated and written by all cores; all-zero chunks stay holes."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, image.capacity)

        def put(batch: list[tuple[int, Extent, Chunk]]) -> int:
            n = 0
            for offset, extent, chunk in batch:
                data = extent.read(chunk)
                if data.count(0) != len(data):
                    os.pwrite(fd, data, offset)
                    n += len(data)
            return n

        return sum(ordered_map(put, _batches(image), workers))
    finally:
        os.close(fd)


def _batches(image: VmdkImage) -> Iterator[list[tuple[int, Extent, Chunk]]]:
    batch: list[tuple[int, Extent, Chunk]] = []
    size = 0
    for item in image.chunks():
        batch.append(item)
        size += item[2].length
        if size >= _BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
