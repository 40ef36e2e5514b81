"""The initrd listing behind `amilab inspect`'s virtio verdict (no VM needed): an early
uncompressed cpio followed by a compressed one, in each compression the kernel accepts."""

from __future__ import annotations

import gzip
import lzma
import subprocess
from pathlib import Path

import pytest

from builder.disk.inspection import boot_problems, initrd_files, initrd_modules
from builder.errors import BadInput
from tests.conftest import need


def _cpio(root: Path, names: list[str]) -> bytes:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x" * 100)
    listing = "\n".join(names) + "\n"
    return subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                          input=listing.encode(), capture_output=True, check=True).stdout


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    need(kind, kind)
    return subprocess.run([kind, "-c"], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_early_cpio_then_compressed_main_archive(kind: str, tmp_path: Path) -> None:
    early = _cpio(tmp_path / "early", ["kernel/x86/microcode/GenuineIntel.bin"])
    main = _cpio(tmp_path / "main", [
        "init",
        "usr/lib/modules/6.1.0-1-amd64/kernel/drivers/block/virtio_blk.ko",
        "usr/lib/modules/6.1.0-1-amd64/kernel/drivers/virtio/virtio_pci.ko.xz",
        "usr/lib/modules/6.1.0-1-amd64/kernel/drivers/ata/ata_piix.ko",
    ])
    data = early + bytes(512) + _compress(kind, main)
    names = initrd_files(data)
    assert "kernel/x86/microcode/GenuineIntel.bin" in names and "init" in names
    assert {"virtio_blk", "virtio_pci", "ata_piix"} <= initrd_modules(data)


def test_corrupt_initrd_is_bad_input() -> None:
    with pytest.raises(BadInput):
        initrd_files(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(BadInput):
        initrd_files(b"PK\x03\x04 not an initrd")


def test_verdict_names_the_missing_driver() -> None:
    report = {
        "kernels": [{
            "release": "6.1.0-1-amd64", "kernel": "/boot/vmlinuz-6.1.0-1-amd64",
            "modules": "/lib/modules/6.1.0-1-amd64", "initrd": "/boot/initrd.img-6.1.0-1-amd64",
            "drivers": {"virtio_blk": None, "virtio_pci": "builtin"}, "virtio": False,
        }],
        "bootloader": {"mbr": "grub2", "efi": []},
    }
    (problem,) = boot_problems(report)
    assert "virtio_blk" in problem and "initrd.img-6.1.0-1-amd64" in problem
