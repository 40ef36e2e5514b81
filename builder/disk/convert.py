"""`amilab convert`: validate a disk, then write it in one of the format table's formats.

Untrusted VMDKs (alone, or inside an OVA/OVF) are never handed to qemu: amilab's own
validating reader turns them into raw, on all cores, and qemu-img only ever reads raw or
a qcow2 whose header was checked for backing and external data files. streamOptimized
output is amilab's writer (VMware's layout); the other formats are qemu-img's.

Input policy: a file is opened as what its content is. A name that says VMDK, OVA, OVF or
qcow2 over content that is not that format is bad input (a text file named notes.vmdk is
not copied as a "raw disk"), and content with no disk format of its own is taken as raw
only from a file named .raw or .img, or when the caller names the source format.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.disk import ova
from builder.disk.formats import FORMATS, DiskFormat, by_suffix, resolve_format
from builder.disk.vmdk import VmdkImage, open_vmdk, sniff
from builder.disk.vmdk.rawio import write_raw
from builder.disk.vmdk.safefile import open_regular
from builder.errors import BadInput, EnvironmentProblem

# What an input file may be: the table's qemu formats and the OVF packages around a VMDK.
SOURCE_FORMATS = ("raw", "qcow2", "vmdk", "ova", "ovf")
# What a name promises beyond the format table's own suffixes. Raw has no header, so only
# a name (or the caller) can say raw.
_OTHER_SUFFIXES = {".img": "raw", ".ova": "ova", ".ovf": "ovf"}
_WHAT = {
    "vmdk": "a VMDK",
    "qcow2": "a qcow2 image",
    "ova": "an OVA package",
    "ovf": "an OVF descriptor",
    "raw": "a raw disk",
}
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


def named_format(path: Path) -> str | None:
    """What the file's name says it holds (vmdk, qcow2, ova, ovf, raw), if anything."""
    if fmt := by_suffix(path.name):
        return fmt.qemu_format
    name = path.name.lower()
    return next((c for suffix, c in _OTHER_SUFFIXES.items() if name.endswith(suffix)), None)


def _found(path: Path, container: str) -> str:
    """What the content is, for a message: the format, or what a headerless file looks like."""
    if container != "raw":
        return _WHAT[container]
    fd = open_regular(path, path.name)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    if size == 0:
        return "an empty file"
    if b"\0" not in head:
        try:
            head.decode()
            return "text"
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 3:  # a character cut by the 4 KiB read
                return "text"
    return "data with no disk format header"


def classify(path: Path, source_format: str | None = None) -> str:
    """The container to open `path` as (vmdk, ova, ovf, qcow2 or raw) by the input policy;
    BadInput when its name or `source_format` promises what its content is not."""
    if source_format is not None and source_format not in SOURCE_FORMATS:
        raise BadInput(
            f"--source-format: {source_format!r} (one of {', '.join(SOURCE_FORMATS)})"
        )
    container = detect(path)
    if source_format == "raw":
        return "raw"  # asked for: the bytes are the disk, whatever they look like
    expected, why = source_format, "--source-format"
    if expected is None:
        expected, why = named_format(path), "by its name"
    if expected is None or expected == "raw":
        if container == "raw" and expected is None:
            raise BadInput(
                f"{path.name}: expected a disk format by its content or name, found "
                f"{_found(path, container)}; raw is taken only from a file named .raw or .img, "
                "or with --source-format raw"
            )
        return container  # a .raw/.img file holding a qcow2 or a VMDK is opened as that
    if container != expected:
        raise BadInput(
            f"{path.name}: expected {_WHAT[expected]} ({why}), found {_found(path, container)}"
        )
    return container


@contextlib.contextmanager
def open_source(path: Path, workdir: Path, source_format: str | None = None) -> Iterator[Source]:
    """Validate `path` and yield it as a Source; an OVA is unpacked under `workdir`."""
    container = classify(path, source_format)
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
    workers: int | None = None, *, source_format: str | None = None,
) -> ConvertResult:
    """Convert `src` to `dst` in format `fmt` (a name from the format table; `vmdk` with
    `subformat` streamOptimized is vmdk-stream). `source_format` takes `src` as that format
    instead of by its name (the only way to read an unnamed raw file). On any failure
    nothing is left beside `dst`."""
    out_fmt = resolve_format(fmt, subformat)
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
        with open_source(src, work, source_format) as source:
            data = _write(source, tmp_out, out_fmt, dst.name, work, workers)
            described = source.describe()
        os.replace(tmp_out, dst)
    except OSError as e:  # a full disk, an unreadable file: the machine, not the input
        raise EnvironmentProblem(f"{e.filename or dst}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConvertResult(
        described, str(dst), out_fmt.qemu_format, out_fmt.subformat,
        time.monotonic() - start, dst.stat().st_size, data,
    )


def _write(
    source: Source, out: Path, fmt: DiskFormat, name: str, work: Path, workers: int | None
) -> int | None:
    if fmt.name == "raw":
        return _to_raw(source, out, workers)
    src, src_format = source.path, source.format
    if source.format == "vmdk" or (source.format != "raw" and fmt.reads_raw_only):
        src, src_format = work / "source.raw", "raw"
        _to_raw(source, src, workers)
    return fmt.write(
        src, out, src_format=src_format, adapter_type=_adapter(source),
        name=name.replace('"', "_"), workers=workers,
    )


def _to_raw(source: Source, out: Path, workers: int | None) -> int | None:
    if source.image is not None:
        return write_raw(source.image, out, workers)
    return FORMATS["raw"].write(source.path, out, src_format=source.format)


def _adapter(source: Source) -> str:
    # Keep the controller the disk came from; VMware's default otherwise.
    adapter = source.image.adapter_type if source.image else None
    return adapter if adapter in ("ide", "buslogic", "lsilogic", "legacyESX") else "lsilogic"
