"""amilab's streamOptimized writer: VMware's marker layout, read identically by amilab,
qemu-img and libvmdk, passes `qemu-img check`, stores no all-zero grain."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest

from builder.disk.vmdk import open_vmdk
from builder.disk.vmdk.descriptor import parse_descriptor
from builder.disk.vmdk.header import (
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    GD_AT_END,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    SECTOR,
    parse_header,
)
from builder.disk.vmdk.stream_writer import write_stream_optimized
from tests.unit.builder.disk.vmdk.support import make_raw

GRAIN = 65536


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("stream")
    # 40 MiB + 1 sector: more than one grain table, and a last grain that is partial.
    raw = make_raw(d / "disk.raw", size=(40 << 20) + SECTOR, seed=7)
    out = d / "disk.vmdk"
    write_stream_optimized(raw, out, workers=2)
    return raw, out


def walk_markers(path: Path) -> list[tuple[str, int, int]]:
    """Walk the stream from the end of the overhead: (kind, sector, value/LBA)."""
    data = path.read_bytes()
    header = parse_header(data[:SECTOR], path.name, len(data))
    pos = header.overhead * SECTOR
    out = []
    while pos < len(data):
        value, size, type_ = struct.unpack_from("<QII", data, pos)
        if size:
            out.append(("grain", pos // SECTOR, value))
            pos += -(-(12 + size) // SECTOR) * SECTOR
            continue
        kind = {MARKER_EOS: "eos", MARKER_GT: "gt", MARKER_GD: "gd", MARKER_FOOTER: "footer"}
        out.append((kind[type_], pos // SECTOR, value))
        if type_ == MARKER_EOS:
            pos += SECTOR
            break
        pos += SECTOR + value * SECTOR
    assert pos == len(data), "bytes after the end-of-stream marker"
    return out


def nonzero_grains(raw: Path) -> list[int]:
    data = raw.read_bytes()
    data += bytes(-len(data) % GRAIN)
    return [i for i in range(len(data) // GRAIN) if data[i * GRAIN : (i + 1) * GRAIN].strip(b"\0")]


def test_header_and_descriptor(disk: tuple[Path, Path]) -> None:
    raw, out = disk
    data = out.read_bytes()
    h = parse_header(data[:SECTOR], out.name, len(data))
    assert h.version == 3
    assert h.flags & FLAG_COMPRESSED and h.flags & FLAG_MARKERS
    assert h.gd_offset != GD_AT_END  # the grain directory is in the header
    assert h.capacity * SECTOR == raw.stat().st_size
    assert (h.grain_sectors, h.gtes_per_gt, h.compress_algorithm) == (128, 512, 1)
    text = data[h.descriptor_offset * SECTOR : (h.descriptor_offset + h.descriptor_sectors)
                * SECTOR]
    d = parse_descriptor(text, out.name)
    assert d.create_type == "streamOptimized"
    assert [(e.access, e.sectors, e.type, e.filename) for e in d.extents] == [
        ("RDONLY", h.capacity, "SPARSE", "disk.vmdk")
    ]
    assert b'RDONLY %d SPARSE "disk.vmdk"' % h.capacity in text


def test_marker_layout(disk: tuple[Path, Path]) -> None:
    raw, out = disk
    markers = walk_markers(out)
    data = out.read_bytes()
    h = parse_header(data[:SECTOR], out.name, len(data))
    kinds = [k for k, _, _ in markers]
    # grains and grain tables interleave, then GD, footer, end-of-stream, in that order
    assert kinds[-3:] == ["gd", "footer", "eos"]
    assert kinds.count("gt") == h.num_gts == 2
    grains = [lba // 128 for k, _, lba in markers if k == "grain"]
    assert grains == nonzero_grains(raw)  # in LBA order; no all-zero grain is stored
    gt_positions = [i for i, k in enumerate(kinds) if k == "gt"]
    first_gt_span = [lba for k, _, lba in markers[: gt_positions[0]] if k == "grain"]
    assert all(lba < 512 * 128 for lba in first_gt_span)
    gd_sector = next(s for k, s, _ in markers if k == "gd")
    assert h.gd_offset == gd_sector + 1
    footer_sector = next(s for k, s, _ in markers if k == "footer")
    footer = parse_header(data[(footer_sector + 1) * SECTOR :][:SECTOR], "footer", len(data))
    assert footer == h
    gd = struct.unpack_from(f"<{h.num_gts}I", data, h.gd_offset * SECTOR)
    assert list(gd) == [s + 1 for k, s, _ in markers if k == "gt"]


def test_qemu_img_check_and_compare(disk: tuple[Path, Path]) -> None:
    raw, out = disk
    check = subprocess.run(["qemu-img", "check", "-f", "vmdk", str(out)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(raw), str(out)],
        capture_output=True,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_libvmdk_reads_the_same(disk: tuple[Path, Path]) -> None:
    import pyvmdk  # PyPI's libvmdk-python, in the test extra (pyproject.toml)
    raw, out = disk
    handle = pyvmdk.handle()
    handle.open(str(out))
    handle.open_extent_data_files()
    size = handle.get_media_size()
    assert size == raw.stat().st_size
    h = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = handle.read_buffer_at_offset(min(4 << 20, size - offset), offset)
        h.update(chunk)
        offset += len(chunk)
    handle.close()
    assert h.hexdigest() == hashlib.sha256(raw.read_bytes()).hexdigest()


def test_amilab_reads_it_back_as_vmware_layout(disk: tuple[Path, Path]) -> None:
    _, out = disk
    with open_vmdk(out) as image:
        assert "as VMware writes" in image.layout
        image.verify()


def test_smaller_than_qemu_img_and_reproducible(disk: tuple[Path, Path], tmp_path: Path) -> None:
    raw, out = disk
    theirs = tmp_path / "qemu.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
         "subformat=streamOptimized", str(raw), str(theirs)],
        check=True,
    )
    assert out.stat().st_size <= theirs.stat().st_size
    again = tmp_path / "disk.vmdk"
    write_stream_optimized(raw, again, workers=1)
    assert again.read_bytes() == out.read_bytes()  # the same bytes on 1 or 2 threads


def test_empty_disk_has_tables_and_no_grains(tmp_path: Path) -> None:
    raw = tmp_path / "empty.raw"
    raw.write_bytes(b"")
    os.truncate(raw, 64 << 20)
    out = tmp_path / "empty.vmdk"
    stats = write_stream_optimized(raw, out)
    assert stats.data_grains == 0
    kinds = [k for k, _, _ in walk_markers(out)]
    assert kinds == ["gt", "gt", "gd", "footer", "eos"]
