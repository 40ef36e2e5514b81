"""The one format table: every disk format amilab writes or boots, declared once.

Each format is one small class behind one interface (KIWI's pattern): its name (the word
recipes, `convert --format`, `boot --disk-format` and the registry's `locations` use), its
qemu-img format and create options, its file suffix, and which commands accept it. Recipes,
`convert`, the launch plan and the CLI's choices all derive from `FORMATS`.

`vmdk --subformat streamOptimized` is an alias of `vmdk-stream` (see `resolve_format`);
streamOptimized is written by amilab's own writer (VMware's marker layout), the others by
qemu-img.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from builder.disk import qemu_img
from builder.errors import BadInput, BuildFailed

USES = ("recipe", "convert", "boot")
VMDK_SUBFORMATS = ("monolithicSparse", "streamOptimized")


@dataclass(frozen=True)
class WriteOptions:
    """What a writer may record about the disk (the streamOptimized descriptor's adapter and
    file name) and how many threads it may use."""

    adapter_type: str = "lsilogic"  # the controller the disk came from
    name: str | None = None  # the final file name when the output is a temporary file
    workers: int | None = None  # compression threads (default: all cores)


class DiskFormat:
    """Writes a disk in one format. `name` is the recipe's word for it."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    qemu_format: ClassVar[str]
    subformat: ClassVar[str | None] = None  # the VMDK create type, for VMDK formats
    uses: ClassVar[frozenset[str]] = frozenset(USES)
    reads_raw_only: ClassVar[bool] = False  # its writer takes a raw disk, not what qemu reads

    @property
    def options(self) -> tuple[str, ...]:
        """The qemu-img -o values that make this format."""
        return (f"subformat={self.subformat}",) if self.subformat else ()

    def write(
        self,
        src: Path,
        out: Path,
        *,
        src_format: str = "raw",
        adapter_type: str = "lsilogic",
        name: str | None = None,
        workers: int | None = None,
    ) -> int | None:
        """Write `src` (raw unless `src_format` says otherwise) as this format at `out`.
        Returns the data bytes written when the writer counts them. On failure `out` does
        not exist."""
        if src == out:
            if src_format == self.qemu_format:
                return None
            raise ValueError(f"{out}: cannot convert a file into itself")
        try:
            return self._write(src, out, src_format, WriteOptions(adapter_type, name, workers))
        except BaseException:
            out.unlink(missing_ok=True)
            raise

    def _write(self, src: Path, out: Path, src_format: str, how: WriteOptions) -> int | None:
        qemu_img.convert(
            src,
            out,
            src_format=src_format,
            out_format=self.qemu_format,
            options=self.options,
            label=self.name,
            # one request at a time: two cold builds under load gave one raw disk but two
            # monolithicSparse VMDKs (measured); with one coroutine the layout of the
            # clusters qemu-img allocates cannot depend on which request finishes first
            coroutines=1,
        )
        return None


class Raw(DiskFormat):
    name, suffix, qemu_format = "raw", ".raw", "raw"

    def _write(self, src: Path, out: Path, src_format: str, how: WriteOptions) -> int | None:
        if src_format != "raw":
            return super()._write(src, out, src_format, how)
        result = subprocess.run(
            ["cp", "--sparse=always", str(src), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildFailed(f"copying {src.name}: {result.stderr.strip()}")
        return None


class Qcow2(DiskFormat):
    name, suffix, qemu_format = "qcow2", ".qcow2", "qcow2"


class Vmdk(DiskFormat):
    name, suffix, qemu_format = "vmdk", ".vmdk", "vmdk"
    subformat = "monolithicSparse"

    def _write(self, src: Path, out: Path, src_format: str, how: WriteOptions) -> int | None:
        super()._write(src, out, src_format, how)
        content_cid(out)
        return None


_CID = re.compile(rb"\nCID=([0-9a-fA-F]{1,8})\n")


def content_cid(path: Path, head: int = 1 << 16) -> None:
    """Replace the random content ID qemu-img writes into a VMDK's descriptor with one
    derived from the file's bytes, so the same disk converts to the same file (reproducible
    images). qemu-img prints the CID without leading zeros (1 in 16 has 7 digits or fewer),
    so the descriptor is rewritten with an 8-digit CID, taking the room from the NUL padding
    after its text; the digest is of that form with the CID read as zeros."""
    with open(path, "r+b") as f:
        start = f.read(head)
        m = _CID.search(start)
        if m is None:
            return
        width = m.end(1) - m.start(1)
        text_end = start.find(b"\0", m.end())
        room = 8 - width
        if room and (text_end < 0 or start[text_end : text_end + room] != b"\0" * room):
            raise BuildFailed(f"{path.name}: no room in the VMDK descriptor for an 8-digit CID")
        if text_end < 0:
            text_end = len(start)

        def with_cid(cid: bytes) -> bytes:
            return start[: m.start(1)] + cid + start[m.end(1) : text_end] + start[text_end + room :]

        digest = hashlib.sha256(with_cid(b"0" * 8))
        while block := f.read(1 << 20):
            digest.update(block)
        cid = int.from_bytes(digest.digest()[:4], "little") or 1
        f.seek(0)
        f.write(with_cid(f"{cid:08x}".encode()))


class VmdkStream(DiskFormat):
    name, suffix, qemu_format = "vmdk-stream", ".stream.vmdk", "vmdk"
    subformat = "streamOptimized"
    reads_raw_only = True

    def _write(self, src: Path, out: Path, src_format: str, how: WriteOptions) -> int | None:
        # amilab's writer: VMware's marker layout (which ESXi and VM Import expect and
        # qemu-img does not write), all cores, output no larger (bench/convert.py).
        from builder.disk.vmdk.stream_writer import GRAIN_SECTORS, write_stream_optimized

        if src_format != "raw":
            raise ValueError("the streamOptimized writer reads a raw disk")
        stats = write_stream_optimized(
            src, out, adapter_type=how.adapter_type, name=how.name, workers=how.workers
        )
        return stats.data_grains * GRAIN_SECTORS * 512


FORMATS: dict[str, DiskFormat] = {f.name: f() for f in (Raw, Qcow2, Vmdk, VmdkStream)}


def format_names(use: str) -> tuple[str, ...]:
    """The names of the formats `use` ("recipe", "convert" or "boot") accepts, in the
    table's order (raw first: the launch plan's preference)."""
    if use not in USES:
        raise ValueError(f"use: {use!r} (one of {', '.join(USES)})")
    return tuple(name for name, fmt in FORMATS.items() if use in fmt.uses)


def qemu_format(name: str) -> str:
    """The format QEMU's -drive is told for a disk of this format."""
    return FORMATS[name].qemu_format


def by_suffix(filename: str) -> DiskFormat | None:
    """The format a file's name says it is (the longest matching suffix), if any."""
    lower = filename.lower()
    found = [f for f in FORMATS.values() if lower.endswith(f.suffix)]
    return max(found, key=lambda f: len(f.suffix)) if found else None


def resolve_format(name: str, subformat: str | None = None, use: str = "convert") -> DiskFormat:
    """`--format NAME [--subformat SUB]` → the table's format: vmdk + streamOptimized is
    vmdk-stream, vmdk alone is monolithicSparse; a subformat on any other format is refused."""
    names = format_names(use)
    if name not in names:
        raise BadInput(f"--format: {name!r} (one of {', '.join(names)})")
    fmt = FORMATS[name]
    if not subformat:
        return fmt
    if name != "vmdk":
        # vmdk-stream already says its subformat; repeating it is harmless.
        if fmt.subformat is not None and subformat == fmt.subformat:
            return fmt
        raise BadInput("--subformat: only for --format vmdk")
    if subformat not in VMDK_SUBFORMATS:
        raise BadInput(f"--subformat: {subformat!r} (one of {', '.join(VMDK_SUBFORMATS)})")
    for candidate in FORMATS.values():
        if candidate.qemu_format == "vmdk" and candidate.subformat == subformat:
            return candidate
    raise AssertionError(f"no format in the table for vmdk {subformat}")
