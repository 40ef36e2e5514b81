"""Which accelerator a launch uses, and why.

`/dev/kvm` existing proves little: on this kind of host (nested "PVM") it opens, yet normal
guests hang under it. So `auto` takes KVM only when the CPU advertises vmx/svm, /dev/kvm
opens read-write, and a probe guest (a BIOS image of ~180 bytes that goes from real mode to
long mode and then writes to isa-debug-exit, see kvm_probe.S) runs to completion under KVM.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from builder.errors import BadInput, EnvironmentProblem

ACCELERATORS = ("auto", "kvm", "tcg")
PROBE_TIMEOUT = 3.0  # TCG runs the probe in 50 ms; a working KVM is faster still
# isa-debug-exit makes QEMU exit with (value << 1) | 1; the probe writes 0x42.
_PROBE_EXIT = (0x42 << 1) | 1
# kvm_probe.S assembled (`as --32` + `objcopy -O binary`): real mode -> protected mode ->
# paging and long mode -> `out 0xf4`. A real-mode-only probe is not enough: on a nested PVM
# host SeaBIOS runs fine under KVM and the kernel hangs once it leaves real mode.
_PROBE_CODE = bytes.fromhex(
    "fab001e6802e660f0116b0000f20c06683c8010f22c066ea1e000f00080066b810008ed88ec08ed0bf00"
    "10000031c0b9000c0000f3abc7050010000003200000c7050020000003300000c70500300000830000"
    "000f20e083c8200f22e0b8001000000f22d8b9800000c00f320d000100000f300f20c00d000000800f"
    "22c0ea85000f001800b042e6f4f4ebfd8d7426000000000000000000ffff0000009acf00ffff000000"
    "92cf00ffff0000009aaf001f0090000f00"
)
# At reset the CPU runs F000:FFF0, the image's last 16 bytes: `jmp 0` (to the code above).
_RESET_JUMP = bytes([0xE9, 0x0D, 0x00])
_BIOS_SIZE = 65536  # QEMU wants a BIOS image sized in whole 64 KiB units


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str
    # TCG only: "multi", a host thread per vCPU (MTTCG), or "single", one thread running
    # every vCPU in turn (for a host whose cores other guests already take; see
    # harness.matrix.order.tcg_thread)
    tcg_thread: str = "multi"

    def describe(self) -> str:
        one = ", one thread per guest" if self.name == "tcg" and self.tcg_thread == "single" else ""
        return f"{self.name.upper()} ({self.reason}{one})"


def cpu_virt_flag(cpuinfo: str) -> str | None:
    """ "vmx" or "svm" if /proc/cpuinfo's flags advertise hardware virtualization."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[-1].split()
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
            return None
    return None


def _kvm_opens(dev: str = "/dev/kvm") -> str | None:
    """None when /dev/kvm opens read-write, else why not."""
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{dev}: {e.strerror}"
    os.close(fd)
    return None


def probe_bios(path: Path) -> Path:
    image = bytearray(b"\xf4" * _BIOS_SIZE)  # hlt everywhere else
    image[: len(_PROBE_CODE)] = _PROBE_CODE
    image[-16 : -16 + len(_RESET_JUMP)] = _RESET_JUMP
    path.write_bytes(bytes(image))
    return path


def probe(
    accel: str, qemu: str = "qemu-system-x86_64", timeout: float = PROBE_TIMEOUT
) -> str | None:
    """Run the probe guest under `accel`; None when it ran, else what went wrong."""
    with tempfile.TemporaryDirectory(prefix="amilab-probe-") as tmp:
        bios = probe_bios(Path(tmp) / "probe.bin")
        cmd = [
            qemu, "-accel", accel, "-machine", "pc", "-nodefaults", "-display", "none",
            "-m", "16", "-bios", str(bios), "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            return f"{qemu} not found"
        except subprocess.TimeoutExpired:
            return f"a probe guest did not finish within {timeout:.0f} s"
        if done.returncode != _PROBE_EXIT:
            err = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return f"the probe guest failed (exit {done.returncode}: {err})"
    return None


@cache
def _kvm_problem() -> str | None:
    """Why KVM cannot be used here, or None when it works (cached: the probe costs ~0.2 s)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    flag = cpu_virt_flag(cpuinfo)
    if flag is None:
        return "the CPU advertises neither vmx nor svm (nested or emulated host)"
    if problem := _kvm_opens():
        return problem
    if problem := probe("kvm"):
        return f"/dev/kvm opens but {problem}"
    return None


def choose(requested: str = "auto") -> Accelerator:
    if requested not in ACCELERATORS:
        raise BadInput(f"--accel {requested}: expected one of {', '.join(ACCELERATORS)}")
    if requested == "tcg":
        return Accelerator("tcg", "requested with --accel tcg")
    problem = _kvm_problem()
    if requested == "kvm":
        if problem:
            raise EnvironmentProblem(f"--accel kvm: KVM does not work on this machine: {problem}")
        return Accelerator("kvm", "requested with --accel kvm; the probe guest ran")
    if problem:
        return Accelerator("tcg", f"KVM unusable: {problem}")
    return Accelerator("kvm", "vmx/svm advertised, /dev/kvm opens and a probe guest ran")


def libguestfs_environment(chosen: Accelerator) -> dict[str, str]:
    """What libguestfs needs to run on this machine: left alone it picks KVM for its
    appliance and hangs just like our guests would; with TCG chosen it must be told."""
    if chosen.name == "kvm":
        return {}
    return {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
