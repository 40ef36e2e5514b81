"""Machine architectures: what each one is called by EC2, by Debian, by QEMU and by GRUB.

EC2 names an AMI's architecture `i386`, `x86_64` or `arm64`; Debian's packages say `i386`,
`amd64`, `arm64`. i386 trees are made natively on an x86_64 host (the kernel runs 32-bit
programs); arm64 trees need QEMU's user-mode emulator registered with binfmt_misc, which the
project's setup installs (qemu-user-static registers its interpreters with the F flag, so they
work inside chroots without being copied in).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import EnvironmentProblem

BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Architecture:
    name: str  # EC2's
    deb: str  # Debian's
    qemu: str  # the qemu-system binary that boots it
    console: str  # the serial console device the kernel writes to
    grub_efi: str | None  # GRUB's EFI platform, None where amilab makes no UEFI boot for it
    efi_loader: str | None  # the removable-media path's file name on the ESP
    binfmt: str | None  # the binfmt_misc entry a foreign tree needs on an x86_64 host


# i386 boots on qemu-system-x86_64: EC2 ran 32-bit guests on 64-bit hosts (m1.small), and one
# x86 machine for both lets a cell boot an x86_64 kernel over an i386 tree and the reverse.
ARCHITECTURES: dict[str, Architecture] = {
    "x86_64": Architecture("x86_64", "amd64", "qemu-system-x86_64", "ttyS0", "x86_64-efi",
                           "BOOTX64.EFI", None),
    "i386": Architecture("i386", "i386", "qemu-system-x86_64", "ttyS0", None, None, None),
    "arm64": Architecture("arm64", "arm64", "qemu-system-aarch64", "ttyAMA0", "arm64-efi",
                          "BOOTAA64.EFI", "qemu-aarch64"),
}  # fmt: skip
NAMES = tuple(ARCHITECTURES)
DEFAULT = "x86_64"


def of(name: str | None) -> Architecture:
    """The architecture of a record or recipe; records older than architectures are x86_64."""
    return ARCHITECTURES[name or DEFAULT]


def host_runs(arch: Architecture) -> bool:
    return arch.binfmt is None or platform.machine() in ("aarch64", "arm64")


def _binfmt_enabled(entry: str) -> bool:
    try:
        return (BINFMT / entry).read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def ensure_foreign(arch: Architecture) -> None:
    """Make sure the host can run `arch`'s programs (chroot hooks, mmdebstrap's maintainer
    scripts); mounts binfmt_misc and enables qemu-user-static's entry when they are not yet.
    Raises EnvironmentProblem (exit 3) with one line when that cannot be done."""
    if host_runs(arch) or arch.binfmt is None:
        return
    if _binfmt_enabled(arch.binfmt):
        return
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                       capture_output=True, check=False)  # fmt: skip
    if not (BINFMT / "register").exists():
        raise EnvironmentProblem(
            f"{arch.name}: binfmt_misc cannot be mounted here ({BINFMT}), so {arch.deb} "
            "programs cannot run in the build's chroot"
        )
    if not _binfmt_enabled(arch.binfmt):
        for argv in (["update-binfmts", "--enable", arch.binfmt],
                     ["systemctl", "restart", "systemd-binfmt"]):  # fmt: skip
            try:
                subprocess.run(argv, capture_output=True, check=False, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if _binfmt_enabled(arch.binfmt):
                break
    if not _binfmt_enabled(arch.binfmt):
        emulator = f"/usr/bin/{arch.binfmt}-static"
        why = "not installed" if not os.path.exists(emulator) else "not registered"
        raise EnvironmentProblem(
            f"{arch.name}: binfmt_misc has no enabled {arch.binfmt} entry ({emulator} {why}; "
            "run scripts/setup.sh: qemu-user-static, binfmt-support)"
        )
