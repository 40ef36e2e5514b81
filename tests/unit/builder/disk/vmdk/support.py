"""Helpers for the VMDK/OVA tests (no tests here): data-bearing disks in every subformat,
the VirtualBox stream layout, and running the real CLI."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import tarfile
from pathlib import Path

from builder.disk.vmdk.header import GD_AT_END, SECTOR
from tests.conftest import ROOT, run_amilab

DATA = ROOT / "tests" / "data" / "vmware"
FIXTURES = sorted(DATA.glob("*.vmdk"))
QEMU_SUBFORMATS = (
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
)


def make_raw(path: Path, size: int = 24 << 20, seed: int = 1) -> Path:
    """A raw disk with text, random and repeated data, holes, and an odd tail."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"\xeb\x63\x90" + b"MBR boot code".ljust(509, b"\0"))
        for _ in range(40):
            off = rng.randrange(0, size - 70000) & ~511
            f.seek(off)
            kind = rng.randrange(3)
            if kind == 0:
                f.write(rng.randbytes(rng.randrange(1, 70000)))
            elif kind == 1:
                f.write((b"amilab test line %d\n" % off) * rng.randrange(1, 3000))
            else:
                f.write(bytes([rng.randrange(1, 256)]) * rng.randrange(1, 200000))
        f.seek(size - 3)
        f.write(b"end")
    os.truncate(path, size)
    return path


def qemu_vmdk(raw: Path, out: Path, subformat: str) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
         str(raw), str(out)],
        check=True,
    )
    return out


def qemu_to_raw(src: Path, out: Path, fmt: str = "vmdk") -> Path:
    subprocess.run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", str(src), str(out)],
                   check=True)
    return out


def virtualbox_stream(vmware_stream: Path, out: Path) -> Path:
    """VirtualBox's layout from amilab's VMware-layout output: the same stream, but the
    header says the grain directory is at the end (only the footer knows where)."""
    data = bytearray(vmware_stream.read_bytes())
    struct.pack_into("<Q", data, 56, GD_AT_END)
    out.write_bytes(bytes(data))
    return out


def vmfs_pair(raw: Path, directory: Path, create_type: str = "vmfs") -> Path:
    """A vmfs/vmfsThin descriptor with one VMFS extent (the raw file as its -flat.vmdk)."""
    flat = directory / "disk-flat.vmdk"
    subprocess.run(["cp", "--sparse=always", str(raw), str(flat)], check=True)
    sectors = raw.stat().st_size // SECTOR
    desc = directory / "disk.vmdk"
    desc.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n\n# Extent description\n'
        f'RW {sectors} VMFS "disk-flat.vmdk"\n\n'
        'ddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "8"\n'
    )
    return desc


def descriptor(create_type: str, extents: list[str], extra: str = "") -> str:
    return (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n' + extra + "\n".join(extents) + "\n"
    )


def make_ova(path: Path, members: list[tuple[str, bytes]]) -> Path:
    import io

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def amilab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_amilab(*args, timeout=timeout)
