"""`amilab convert`: validate a disk, then write it as raw, qcow2 or VMDK.

Untrusted VMDKs (alone, or inside an OVA/OVF) are never handed to qemu: amilab's own
validating reader turns them into raw, on all cores, and qemu-img only ever reads raw or
a qcow2 whose header was checked for backing and external data files. streamOptimized
output is amilab's writer (VMware's layout); the other formats are qemu-img's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.disk import ova
from builder.disk.vmdk import VmdkImage, open_vmdk, sniff
from builder.disk.vmdk.rawio import write_raw
from builder.disk.vmdk.safefile import open_regular
from builder.disk.vmdk.stream_writer import GRAIN_SECTORS, write_stream_optimized
from builder.errors import BadInput, BuildFailed, EnvironmentProblem

FORMATS = ("raw", "qcow2", "vmdk")
SUBFORMATS = ("monolithicSparse", "streamOptimized")
_QCOW2_MAGIC = b"QFI\xfb"


@dataclass
class Source:
    """An opened, validated input disk: either a VMDK image or a file qemu-img may read."""

    path: Path
    format: str  # raw, qcow2, vmdk
    container: str  # raw, qcow2, vmdk, ova, ovf
    capacity: int
    image: VmdkImage | None = None
    package: ova.Package | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": str(self.path),
            "container": self.container,
            "format": self.format,
            "capacity": self.capacity,
            **self.details,
        }
        if self.image:
            out["vmdk"] = self.image.describe()
        if self.package:
            out["package"] = self.package.describe()
        return out


def detect(path: Path) -> str:
    """The container of a file by its content: vmdk, ova, ovf, qcow2 or raw."""
    fd = open_regular(path, path.name)
    try:
        head = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    if sniff(path):
        return "vmdk"
    if head[:4] == _QCOW2_MAGIC:
        return "qcow2"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "ova"
    if head.lstrip().startswith(b"<?xml") or b"<Envelope" in head or b":Envelope" in head:
        return "ovf"
    for magic, name in ((b"conectix", "VHD"), (b"vhdxfile", "VHDX")):
        if head.startswith(magic):
            raise BadInput(f"{path.name}: format: {name} is not supported (raw, qcow2, VMDK, OVA)")
    if head[64:68] == b"\x7f\x10\xda\xbe":
        raise BadInput(f"{path.name}: format: VDI is not supported (raw, qcow2, VMDK, OVA)")
    return "raw"


@contextlib.contextmanager
def open_source(path: Path, workdir: Path) -> Iterator[Source]:
    """Validate `path` and yield it as a Source; an OVA is unpacked under `workdir`."""
    container = detect(path)
    if container == "vmdk":
        with open_vmdk(path) as image:
            yield Source(path, "vmdk", "vmdk", image.capacity, image)
        return
    if container in ("ova", "ovf"):
        pkg = ova.open_ova(path, workdir / "ova") if container == "ova" else ova.open_ovf(path)
        disks = pkg.ovf.disks
        if not disks or not disks[0].href:
            raise BadInput(f"{path.name}: OVF DiskSection: no disk with a file")
        disk = disks[0]
        disk_path = pkg.directory / disk.href
        with open_vmdk(disk_path) as image:
            if image.capacity > disk.capacity:
                raise BadInput(
                    f"{path.name}: Disk {disk.disk_id} capacity: {disk.capacity} bytes in the "
                    f"OVF, but its VMDK holds {image.capacity}"
                )
            details = {"disk": disk.href, "controller": disk.controller}
            if len(disks) > 1:
                details["otherDisks"] = [d.href for d in disks[1:]]
            yield Source(disk_path, "vmdk", container, image.capacity, image, pkg, details)
        return
    if container == "qcow2":
        _check_qcow2(path)
        yield Source(path, "qcow2", "qcow2", _qcow2_size(path))
        return
    size = path.stat().st_size
    if size == 0:
        raise BadInput(f"{path.name}: an empty file is not a disk")
    yield Source(path, "raw", "raw", size)


def _check_qcow2(path: Path) -> None:
    # A backing file or an external data file names another file that qemu would open:
    # the same host-file hole as a VMDK extent path.
    with open(path, "rb") as f:
        head = f.read(104)
    if len(head) < 72:
        raise BadInput(f"{path.name}: qcow2 header: truncated")
    version, backing_offset = struct.unpack_from(">IQ", head, 4)
    if backing_offset:
        raise BadInput(f"{path.name}: qcow2 backing file: not allowed (convert it standalone)")
    if version >= 3 and len(head) >= 80:
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        if incompatible & (1 << 2):
            raise BadInput(f"{path.name}: qcow2 data-file: an external data file is not allowed")


def _qcow2_size(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(32)
    return struct.unpack_from(">Q", head, 24)[0]


@dataclass
class ConvertResult:
    source: dict[str, Any]
    output: str
    format: str
    subformat: str | None
    seconds: float
    output_bytes: int
    data_bytes: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "Source": self.source,
            "Output": self.output,
            "Format": self.format,
            "Subformat": self.subformat,
            "Seconds": round(self.seconds, 3),
            "OutputBytes": self.output_bytes,
            "DataBytes": self.data_bytes,
        }


def convert(
    src: Path, dst: Path, fmt: str = "raw", subformat: str | None = None,
    workers: int | None = None,
) -> ConvertResult:
    """Convert `src` to `dst`; on any failure nothing is left beside `dst`."""
    if fmt not in FORMATS:
        raise BadInput(f"--format: {fmt!r} (one of {', '.join(FORMATS)})")
    if subformat and fmt != "vmdk":
        raise BadInput("--subformat: only for --format vmdk")
    if fmt == "vmdk":
        subformat = subformat or "monolithicSparse"
        if subformat not in SUBFORMATS:
            raise BadInput(f"--subformat: {subformat!r} (one of {', '.join(SUBFORMATS)})")
    if not src.exists():
        raise BadInput(f"{src}: no such file")
    if dst.exists() and dst.resolve() == src.resolve():
        raise BadInput(f"{dst}: the output would overwrite the input")
    if not dst.parent.is_dir():
        raise BadInput(f"{dst.parent}: no such directory for the output")
    if dst.is_dir():
        raise BadInput(f"{dst}: is a directory")
    start = time.monotonic()
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    except OSError as e:
        raise EnvironmentProblem(f"{dst.parent}: {e.strerror}") from None
    tmp_out = work / "out"
    try:
        with open_source(src, work) as source:
            data = _write(source, tmp_out, fmt, subformat, dst.name, work, workers)
            described = source.describe()
        os.replace(tmp_out, dst)
    except OSError as e:  # a full disk, an unreadable file: the machine, not the input
        raise EnvironmentProblem(f"{e.filename or dst}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConvertResult(
        described, str(dst), fmt, subformat, time.monotonic() - start, dst.stat().st_size, data
    )


def _write(
    source: Source, out: Path, fmt: str, subformat: str | None, name: str, work: Path,
    workers: int | None,
) -> int | None:
    if fmt == "raw":
        return _to_raw(source, out, workers)
    raw = source.path if source.format == "raw" else None
    if raw is None and (source.format == "vmdk" or subformat == "streamOptimized"):
        raw = work / "source.raw"
        _to_raw(source, raw, workers)
    if fmt == "vmdk" and subformat == "streamOptimized":
        assert raw is not None
        adapter = _adapter(source)
        stats = write_stream_optimized(
            raw, out, adapter_type=adapter, name=name.replace('"', "_"), workers=workers
        )
        return stats.data_grains * GRAIN_SECTORS * 512
    in_fmt = "raw" if raw is not None else source.format
    opts = ["-o", "subformat=monolithicSparse"] if fmt == "vmdk" else []
    qemu_img_convert(raw or source.path, in_fmt, out, fmt, opts)
    return None


def _to_raw(source: Source, out: Path, workers: int | None) -> int | None:
    if source.image is not None:
        return write_raw(source.image, out, workers)
    if source.format == "raw":
        result = subprocess.run(["cp", "--sparse=always", str(source.path), str(out)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildFailed(f"copying {source.path.name}: {result.stderr.strip()}")
        return None
    qemu_img_convert(source.path, source.format, out, "raw", [])
    return None


def _adapter(source: Source) -> str:
    # Keep the controller the disk came from; VMware's default otherwise.
    adapter = source.image.adapter_type if source.image else None
    return adapter if adapter in ("ide", "buslogic", "lsilogic", "legacyESX") else "lsilogic"


def qemu_img_convert(src: Path, src_fmt: str, dst: Path, fmt: str, opts: list[str]) -> None:
    if not shutil.which("qemu-img"):
        raise EnvironmentProblem("qemu-img is missing (qemu-utils)")
    argv = ["qemu-img", "convert", "-q", "-f", src_fmt, "-O", fmt, *opts, str(src), str(dst)]
    result = subprocess.run(argv, capture_output=True, check=False)
    if result.returncode != 0:
        msg = result.stderr.decode(errors="replace").strip().splitlines()
        raise BuildFailed(f"qemu-img convert to {fmt} failed: {msg[-1] if msg else '?'}")
