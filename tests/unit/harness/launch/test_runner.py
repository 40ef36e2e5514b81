"""`amilab boot --runner`: a qemu-runner pyz that reproduces the harness's command line."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from builder.images.registry import ImageRecord
from harness.launch.accel import Accelerator
from harness.launch.machine import Disk
from harness.launch.plan import LaunchPlan
from harness.launch.runner import write_runner


def _plan(tmp_path: Path, paravirtual: bool = True) -> LaunchPlan:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 512)
    image = ImageRecord("ami-0123456789abcdef0", "machine", "pv", image_location=str(disk))
    if not paravirtual:
        return LaunchPlan(image, "hvm-bios", Disk(disk, "raw"))
    kernel = ImageRecord("aki-0123456789abcdef0", "kernel", "k", image_location="/k/vmlinuz")
    ramdisk = ImageRecord("ari-0123456789abcdef0", "ramdisk", "r", image_location="/k/initrd")
    return LaunchPlan(image, "paravirtual", Disk(disk, "raw"), kernel=kernel, ramdisk=ramdisk,
                      cmdline="root=LABEL=cloudimg-rootfs console=ttyS0 panic=-1")  # fmt: skip


def test_paravirtual_runner(tmp_path: Path) -> None:
    out = tmp_path / "pv.pyz"
    lines = write_runner(_plan(tmp_path), Accelerator("tcg", "test"), out)
    assert out.exists() and (tmp_path / "pv.pyz.d" / "imds_cgi.py").exists()
    assert any("/k/vmlinuz" in line for line in lines)
    dry = subprocess.run([sys.executable, str(out), "--dry-run", "/k/vmlinuz"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    argv = shlex.split(dry.stdout)
    assert argv[argv.index("-kernel") + 1] == "/k/vmlinuz"
    assert argv[argv.index("-initrd") + 1] == "/k/initrd"
    assert argv[argv.index("-append") + 1] == "root=LABEL=cloudimg-rootfs console=ttyS0 panic=-1"
    assert argv[argv.index("-serial") + 1] == "mon:stdio"
    netdev = argv[argv.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev and "guestfwd=" in netdev
    assert "snapshot=on" in argv[argv.index("-drive") + 1]


def test_hvm_runner_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "hvm.pyz"
    lines = write_runner(_plan(tmp_path, paravirtual=False), Accelerator("tcg", "test"), out)
    assert any("--dry-run" in line for line in lines)
    dry = subprocess.run([sys.executable, str(out), "--dry-run"], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert "-kernel" not in shlex.split(dry.stdout)
