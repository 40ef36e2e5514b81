"""Output disk formats: one small class per format behind one interface (KIWI's pattern)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from builder.errors import BuildFailed, EnvironmentProblem


class DiskFormat:
    """Writes a raw disk in one format. `name` is the recipe's word for it."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    qemu_format: ClassVar[str]

    def write(self, raw: Path, out: Path) -> None:
        raise NotImplementedError


class _QemuImgFormat(DiskFormat):
    options: ClassVar[tuple[str, ...]] = ()

    def write(self, raw: Path, out: Path) -> None:
        if not shutil.which("qemu-img"):
            raise EnvironmentProblem("qemu-img is missing (qemu-utils)")
        argv = ["qemu-img", "convert", "-q", "-f", "raw", "-O", self.qemu_format]
        for opt in self.options:
            argv += ["-o", opt]
        result = subprocess.run([*argv, str(raw), str(out)], capture_output=True, check=False)
        if result.returncode != 0:
            out.unlink(missing_ok=True)
            msg = result.stderr.decode(errors="replace").strip()
            raise BuildFailed(f"qemu-img convert to {self.name} failed: {msg}")


class Raw(DiskFormat):
    name = "raw"
    suffix = ".raw"
    qemu_format = "raw"

    def write(self, raw: Path, out: Path) -> None:
        if raw != out:
            subprocess.run(["cp", "--sparse=always", str(raw), str(out)], check=True)


class Qcow2(_QemuImgFormat):
    name = "qcow2"
    suffix = ".qcow2"
    qemu_format = "qcow2"


class Vmdk(_QemuImgFormat):
    name = "vmdk"
    suffix = ".vmdk"
    qemu_format = "vmdk"
    options = ("subformat=monolithicSparse",)


class VmdkStream(_QemuImgFormat):
    name = "vmdk-stream"
    suffix = ".stream.vmdk"
    qemu_format = "vmdk"
    options = ("subformat=streamOptimized",)

    def write(self, raw: Path, out: Path) -> None:
        # amilab's writer: VMware's marker layout (which ESXi and VM Import expect and
        # qemu-img does not write), all cores, output no larger (bench/convert.py).
        from builder.disk.vmdk.stream_writer import write_stream_optimized

        try:
            write_stream_optimized(raw, out)
        except BaseException:
            out.unlink(missing_ok=True)
            raise


FORMATS: dict[str, DiskFormat] = {f.name: f() for f in (Raw, Qcow2, Vmdk, VmdkStream)}
