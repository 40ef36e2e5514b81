"""Hostile and corrupt inputs through the real CLI: each exits 2 with one line naming the
field, with no traceback, no hang, and nothing written beside the output path."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.disk.vmdk.header import GD_AT_END, SECTOR, parse_header
from builder.disk.vmdk.stream_writer import write_stream_optimized
from tests.unit.builder.disk.vmdk.support import (
    DATA,
    amilab,
    descriptor,
    make_ova,
    make_raw,
    qemu_vmdk,
)


def _stream(d: Path) -> tuple[bytearray, object]:
    raw = make_raw(d / "src.raw", size=4 << 20, seed=3)
    out = d / "s.vmdk"
    write_stream_optimized(raw, out)
    raw.unlink()
    data = bytearray(out.read_bytes())
    out.unlink()
    return data, parse_header(bytes(data[:SECTOR]), "s", len(data))


def _first_grain(data: bytearray, h: object) -> int:
    """The byte offset of the largest compressed grain in the first grain table."""
    gt = struct.unpack_from("<I", data, h.gd_offset * SECTOR)[0]  # type: ignore[attr-defined]
    gtes = [g * SECTOR for g in struct.unpack_from("<512I", data, gt * SECTOR) if g]
    return max(gtes, key=lambda at: struct.unpack_from("<I", data, at + 8)[0])


def _write(d: Path, name: str, data: bytes | bytearray) -> Path:
    p = d / name
    p.write_bytes(bytes(data))
    return p


def _sparse(d: Path) -> tuple[bytearray, object]:
    raw = make_raw(d / "src.raw", size=4 << 20, seed=4)
    vmdk = qemu_vmdk(raw, d / "m.vmdk", "monolithicSparse")
    raw.unlink()
    data = bytearray(vmdk.read_bytes())
    vmdk.unlink()
    return data, parse_header(bytes(data[:SECTOR]), "m", len(data))


def _flat_pair(d: Path, extent: str, size_sectors: int = 8192) -> Path:
    text = descriptor("monolithicFlat", [f'RW {size_sectors} FLAT "{extent}" 0'])
    return _write(d, "d.vmdk", text.encode())


# --- the cases ---------------------------------------------------------------------------


def absolute_path(d: Path) -> Path:
    return _flat_pair(d, "/etc/hostname", 1)


def dotdot_path(d: Path) -> Path:
    return _flat_pair(d, "../../../etc/hostname", 1)


def symlink_out(d: Path) -> Path:
    os.symlink("/etc/hostname", d / "link-flat.vmdk")
    return _flat_pair(d, "link-flat.vmdk", 1)


def symlink_dir_out(d: Path) -> Path:
    os.symlink("/etc", d / "sub")
    return _flat_pair(d, "sub/hostname", 1)


def fifo_extent(d: Path) -> Path:
    os.mkfifo(d / "fifo-flat.vmdk")
    return _flat_pair(d, "fifo-flat.vmdk", 1)


def device_extent(d: Path) -> Path:
    os.symlink("/dev/zero", d / "zero-flat.vmdk")  # inside the dir by name, a device really
    return _flat_pair(d, "zero-flat.vmdk", 1)


def full_device(d: Path) -> Path:
    return _write(d, "d.vmdk", descriptor("fullDevice", ['RW 2048 FLAT "/dev/sda" 0']).encode())


def delta_disk(d: Path) -> Path:
    (d / "x-flat.vmdk").write_bytes(bytes(SECTOR))
    text = descriptor("monolithicFlat", ['RW 1 FLAT "x-flat.vmdk" 0'])
    text = text.replace("parentCID=ffffffff", 'parentCID=1234abcd\nparentFileNameHint="/etc/x"')
    return _write(d, "d.vmdk", text.encode())


def flat_too_short(d: Path) -> Path:
    (d / "x-flat.vmdk").write_bytes(bytes(10 * SECTOR))
    return _flat_pair(d, "x-flat.vmdk", 20)


def unknown_create_type(d: Path) -> Path:
    return _write(d, "d.vmdk", descriptor("superSparse", ['RW 1 SPARSE "x.vmdk"']).encode())


def garbage_descriptor_line(d: Path) -> Path:
    text = descriptor("monolithicFlat", ['RW 1 FLAT "x.vmdk" 0', "this is not a descriptor"])
    return _write(d, "d.vmdk", text.encode())


def descriptor_not_utf8(d: Path) -> Path:
    return _write(d, "d.vmdk", b"# Disk DescriptorFile\ncreateType=\"\xff\xfe\"\n")


def sparse_piece_mismatch(d: Path) -> Path:
    data, _ = _sparse(d)
    _write(d, "p-s001.vmdk", data)
    return _write(
        d, "d.vmdk", descriptor("twoGbMaxExtentSparse", ['RW 4000 SPARSE "p-s001.vmdk"']).encode()
    )


def truncated_header(d: Path) -> Path:
    data, _ = _stream(d)
    return _write(d, "t.vmdk", data[:300])


def cowd(d: Path) -> Path:
    return _write(d, "c.vmdk", b"COWD" + bytes(2044))


def _stream_field(d: Path, name: str, fmt: str, offset: int, value: int | Callable[[Any], int]
                  ) -> Path:  # fmt: skip
    """A streamOptimized VMDK with one header field set to `value` (or value(header))."""
    data, h = _stream(d)
    struct.pack_into(fmt, data, offset, value(h) if callable(value) else value)
    return _write(d, name, data)


def bad_grain_size(d: Path) -> Path:
    return _stream_field(d, "g.vmdk", "<Q", 20, 100)


def bad_gtes(d: Path) -> Path:
    return _stream_field(d, "g.vmdk", "<I", 44, 4096)


def capacity_overflow(d: Path) -> Path:
    return _stream_field(d, "c.vmdk", "<Q", 12, 1 << 62)


def capacity_mismatch(d: Path) -> Path:
    return _stream_field(d, "c.vmdk", "<Q", 12, lambda h: h.capacity * 2)


def gd_past_eof(d: Path) -> Path:
    return _stream_field(d, "g.vmdk", "<Q", 56, 1 << 40)


def gt_past_eof(d: Path) -> Path:
    data, h = _stream(d)
    struct.pack_into("<I", data, h.gd_offset * SECTOR, 0x7FFFFFF0)  # type: ignore[attr-defined]
    return _write(d, "g.vmdk", data)


def grain_past_eof(d: Path) -> Path:
    data, h = _sparse(d)
    gt = struct.unpack_from("<I", data, h.gd_offset * SECTOR)[0]  # type: ignore[attr-defined]
    struct.pack_into("<I", data, gt * SECTOR, len(data) // SECTOR + 5)
    return _write(d, "g.vmdk", data)


def grain_inflates_past(d: Path) -> Path:
    data, h = _stream(d)
    at = _first_grain(data, h)
    bomb = zlib.compress(bytes(128 << 10), 9)  # 128 KiB of zeros in a 64 KiB grain
    assert len(bomb) < struct.unpack_from("<I", data, at + 8)[0]
    lba = struct.unpack_from("<Q", data, at)[0]
    struct.pack_into("<QI", data, at, lba, len(bomb))
    data[at + 12 : at + 12 + len(bomb)] = bomb
    return _write(d, "b.vmdk", data)


def grain_not_zlib(d: Path) -> Path:
    data, h = _stream(d)
    at = _first_grain(data, h)
    junk = b"\x00not a zlib stream at all!!"
    data[at + 12 : at + 12 + len(junk)] = junk
    return _write(d, "z.vmdk", data)


def grain_wrong_lba(d: Path) -> Path:
    data, h = _stream(d)
    at = _first_grain(data, h)
    struct.pack_into("<Q", data, at, 999 * 128)
    return _write(d, "l.vmdk", data)


def grain_size_zero(d: Path) -> Path:
    data, h = _stream(d)
    at = _first_grain(data, h)
    struct.pack_into("<I", data, at + 8, 0)
    return _write(d, "s.vmdk", data)


def shared_tables(d: Path) -> Path:
    # Every GD entry points at one GT, every GTE at one grain: a small file claiming an
    # enormous amount of work.
    data, h = _sparse(d)
    num = 1 << 22  # capacity of 2 TiB in 128-sector grains
    gds = num // 512
    gd_at = len(data) // SECTOR
    struct.pack_into("<Q", data, 12, num * 128)
    struct.pack_into("<Q", data, 56, gd_at)
    gt = struct.unpack_from("<I", data, h.gd_offset * SECTOR)[0]  # type: ignore[attr-defined]
    first = struct.unpack_from("<I", data, gt * SECTOR)[0]
    struct.pack_into("<512I", data, gt * SECTOR, *([first] * 512))
    data += struct.pack(f"<{gds}I", *([gt] * gds))
    text = data[SECTOR : 2 * SECTOR]
    data[SECTOR : 2 * SECTOR] = text.replace(b"RW 8192 SPARSE", b"RW %d SPARSE" % (num * 128))[
        :SECTOR
    ].ljust(SECTOR, b"\0")
    return _write(d, "amp.vmdk", data)


def newline_damaged(d: Path) -> Path:
    data, _ = _stream(d)
    data[73:77] = b"\n \n\n"
    return _write(d, "n.vmdk", data)


def stream_truncated(d: Path) -> Path:
    data, _ = _stream(d)
    struct.pack_into("<Q", data, 56, GD_AT_END)  # VirtualBox layout...
    return _write(d, "t.vmdk", data[:-SECTOR])  # ...without its end-of-stream marker


def footer_mismatch(d: Path) -> Path:
    data, _ = _stream(d)
    struct.pack_into("<Q", data, 56, GD_AT_END)
    struct.pack_into("<Q", data, len(data) - 2 * SECTOR + 12, 1 << 20)  # footer capacity
    return _write(d, "f.vmdk", data)


def embedded_extent_size(d: Path) -> Path:
    data, h = _stream(d)
    text = bytes(data[SECTOR : 21 * SECTOR])
    n = h.capacity  # type: ignore[attr-defined]
    data[SECTOR : 21 * SECTOR] = text.replace(b"RDONLY %d" % n, b"RDONLY %d" % (n - 128))
    return _write(d, "e.vmdk", data)


def ova_dotdot(d: Path) -> Path:
    return make_ova(d / "a.ova", [("x.ovf", b"<x/>"), ("../evil", b"boom")])


def ova_absolute(d: Path) -> Path:
    return make_ova(d / "a.ova", [("/tmp/amilab-evil", b"boom")])


def ova_symlink(d: Path) -> Path:
    import io
    import tarfile

    with tarfile.open(d / "a.ova", "w") as tar:
        info = tarfile.TarInfo("disk.vmdk")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/shadow"
        tar.addfile(info)
        tar.addfile(tarfile.TarInfo("x.ovf"), io.BytesIO(b""))
    return d / "a.ova"


def _ubuntu_members() -> list[tuple[str, bytes]]:
    return [
        (n, (DATA / n).read_bytes())
        for n in ("ubuntu.2.0.ovf", "ubuntu.2.0.mf", "ubuntu.2.0-disk1.vmdk")
    ]


def ova_digest_mismatch(d: Path) -> Path:
    members = _ubuntu_members()
    disk = bytearray(members[2][1])
    disk[SECTOR + 20] ^= 1  # one byte of the descriptor comment area
    members[2] = (members[2][0], bytes(disk))
    return make_ova(d / "a.ova", members)


def ova_not_in_manifest(d: Path) -> Path:
    members = _ubuntu_members()
    members[1] = ("ubuntu.2.0.mf", members[1][1].split(b"\n")[0] + b"\n")
    return make_ova(d / "a.ova", members)


def ovf_entity(d: Path) -> Path:
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaa">]><Envelope>&a;</Envelope>'
    return _write(d, "x.ovf", bomb)


def ovf_capacity_smaller(d: Path) -> Path:
    shutil.copy(DATA / "ubuntu.2.0-disk1.vmdk", d)
    text = (DATA / "ubuntu.2.0.ovf").read_bytes().replace(b'"8589934592"', b'"1048576"')
    return _write(d, "u.ovf", text)


def qcow2_backing(d: Path) -> Path:
    p = d / "b.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/hostname", "-F", "raw",
         str(p), "1M"],
        check=True,
    )
    return p


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "absolute-path": (absolute_path, "absolute path"),
    "dotdot-path": (dotdot_path, "'..'"),
    "symlink-out": (symlink_out, "symlink"),
    "symlink-dir-out": (symlink_dir_out, "symlink"),
    "fifo-extent": (fifo_extent, "not a regular file"),
    "device-extent": (device_extent, "symlink"),
    "full-device": (full_device, "createType"),
    "delta-disk": (delta_disk, "parentCID"),
    "flat-too-short": (flat_too_short, "past the end of the file"),
    "unknown-create-type": (unknown_create_type, "createType"),
    "garbage-line": (garbage_descriptor_line, "cannot parse"),
    "descriptor-not-utf8": (descriptor_not_utf8, "not UTF-8"),
    "extents-do-not-add-up": (sparse_piece_mismatch, "do not add up"),
    "truncated-header": (truncated_header, "header: truncated"),
    "cowd": (cowd, "COWD"),
    "grain-size": (bad_grain_size, "header.grainSize"),
    "gtes-per-gt": (bad_gtes, "header.numGTEsPerGT"),
    "capacity-overflow": (capacity_overflow, "header.capacity"),
    "capacity-mismatch": (capacity_mismatch, "does not add up"),
    "gd-past-eof": (gd_past_eof, "header.gdOffset"),
    "gt-past-eof": (gt_past_eof, "grain directory[0]"),
    "grain-past-eof": (grain_past_eof, "past the end of the file"),
    "grain-inflates-past-grain": (grain_inflates_past, "inflates past 65536 bytes"),
    "grain-not-zlib": (grain_not_zlib, "zlib"),
    "grain-wrong-lba": (grain_wrong_lba, "LBA"),
    "grain-size-zero": (grain_size_zero, "compressed size 0"),
    "shared-tables": (shared_tables, "more grains than the file can hold"),
    "newline-damaged": (newline_damaged, "text-mode"),
    "stream-truncated": (stream_truncated, "end-of-stream marker"),
    "footer-mismatch": (footer_mismatch, "footer.capacity"),
    "embedded-extent-size": (embedded_extent_size, "does not add up"),
    "ova-dotdot": (ova_dotdot, "escapes the package directory"),
    "ova-absolute": (ova_absolute, "escapes the package directory"),
    "ova-symlink": (ova_symlink, "a symlink"),
    "ova-digest-mismatch": (ova_digest_mismatch, "digest mismatch"),
    "ova-not-in-manifest": (ova_not_in_manifest, "not covered by the manifest"),
    "ovf-entity": (ovf_entity, "DOCTYPE"),
    "ovf-capacity-smaller": (ovf_capacity_smaller, "capacity"),
    "qcow2-backing": (qcow2_backing, "backing file"),
}


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_exits_2_with_one_line(name: str, tmp_path: Path) -> None:
    build, expected = CASES[name]
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = build(src_dir)
    before = sorted(p.name for p in src_dir.iterdir())
    for fmt in ("raw", "vmdk"):
        args = ["convert", str(src), str(out_dir / f"disk.{fmt}"), "--format", fmt]
        if fmt == "vmdk":
            args += ["--subformat", "streamOptimized"]
        result = amilab(*args, timeout=60)
        err = result.stderr.strip()
        assert result.returncode == 2, (result.returncode, err)
        assert "Traceback" not in result.stderr
        assert len(err.splitlines()) == 1 and err.startswith("amilab: "), err
        assert expected in err, err
        assert list(out_dir.iterdir()) == []  # no output, no temporary left behind
    assert sorted(p.name for p in src_dir.iterdir()) == before
    assert not Path("/tmp/amilab-evil").exists()
