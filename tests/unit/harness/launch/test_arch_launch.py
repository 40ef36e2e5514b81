"""Launches per architecture: QEMU's machine, EC2's instance-type refusal, and the console
class for a kernel that cannot run the image's init."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from harness.launch.accel import Accelerator
from harness.launch.console import ConsoleWatcher
from harness.launch.machine import Disk, MachineSpec, command_line
from harness.launch.types import TYPES, check_image, default_type
from harness.matrix.classify import Observed, classify
from harness.matrix.results import FAIL


def _spec(**kw: object) -> MachineSpec:
    base: dict = dict(
        profile="paravirtual",
        accelerator=Accelerator("kvm", "test"),
        disk=Disk(Path("/images/disk.raw"), "raw"),
        kernel=Path("/k/vmlinuz"),
        ramdisk=Path("/k/initrd"),
        cmdline="root=LABEL=cloudimg-rootfs console=ttyAMA0 panic=-1",
        instance_id="i-0123456789abcdef0",
    )
    base.update(kw)
    return MachineSpec(**base)


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_arm64_direct_boot_is_the_virt_board_under_tcg() -> None:
    argv = command_line(_spec(architecture="arm64"))
    assert argv[0].endswith("qemu-system-aarch64")
    assert _opt(argv, "-machine") == ["virt"]
    # KVM cannot run another architecture's guest, whatever the host's probe said
    assert _opt(argv, "-accel") == ["tcg,thread=multi"] and _opt(argv, "-cpu") == ["cortex-a57"]
    assert _opt(argv, "-bios") == [] and _opt(argv, "-kernel") == ["/k/vmlinuz"]


@pytest.mark.parametrize(
    "arch,accel,want",
    [
        ("x86_64", "tcg", "tcg,thread=single"),
        ("arm64", "kvm", "tcg,thread=single"),  # arm64 is emulated on any host
        ("x86_64", "kvm", "kvm"),  # nothing to thread: the host's CPU runs the guest
    ],
)
def test_one_thread_per_guest_when_asked(arch: str, accel: str, want: str) -> None:
    single = Accelerator(accel, "test", tcg_thread="single")
    assert _opt(command_line(_spec(architecture=arch, accelerator=single)), "-accel") == [want]
    default = Accelerator(accel, "test")
    assert "single" not in _opt(command_line(_spec(architecture=arch, accelerator=default)),
                                "-accel")[0]  # fmt: skip


def test_arm64_hvm_boots_aavmf() -> None:
    argv = command_line(_spec(architecture="arm64", profile="hvm-uefi", kernel=None))
    assert _opt(argv, "-machine") == ["virt"]
    assert _opt(argv, "-bios") == ["/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"]


def test_i386_runs_on_the_x86_64_pc() -> None:
    tcg = Accelerator("tcg", "test")
    argv = command_line(_spec(architecture="i386", accelerator=tcg))
    assert argv[0].endswith("qemu-system-x86_64") and _opt(argv, "-machine") == ["pc"]
    assert _opt(argv, "-cpu") == ["qemu64,cx16=off"]
    # the 686-pae kernel takes virtio devices only in their legacy interface
    assert _opt(argv, "-global") == ["virtio-pci.disable-modern=on"]
    assert _opt(command_line(_spec(architecture="x86_64", accelerator=tcg)), "-global") == []


def test_instance_types_say_which_architectures_they_run() -> None:
    assert set(TYPES["m1.small"].architectures) == {"i386", "x86_64"}
    assert TYPES["t3.micro"].architectures == ("x86_64",)
    for name in ("t4g.micro", "m6g.medium", "a1.medium"):
        assert TYPES[name].architectures == ("arm64",) and TYPES[name].virtualization == ("hvm",)
    assert default_type("arm64") == "t4g.micro" and default_type("i386") == "m1.small"


@pytest.mark.parametrize(("itype", "arch"), [("t3.micro", "arm64"), ("t4g.micro", "x86_64"),
                                             ("m1.large", "i386")])  # fmt: skip
def test_type_that_cannot_run_the_architecture_is_ec2s_error(itype: str, arch: str) -> None:
    with pytest.raises(BadInput) as e:
        check_image(TYPES[itype], arch, "hvm")
    assert e.value.exit_code == 2
    assert str(e.value).startswith("InvalidParameterValue: The architecture ")
    assert f"architecture '{arch}' of the specified AMI" in str(e.value)


SWITCH_ROOT = "switch_root: can't execute '/sbin/init': Exec format error"
NO_RAMDISK = "[    3.1] Failed to execute /sbin/init (error -8)"


@pytest.mark.parametrize("line", [SWITCH_ROOT, NO_RAMDISK])
def test_init_of_another_architecture_is_named(tmp_path: Path, line: str) -> None:
    log = tmp_path / "console.log"
    text = "\n".join([
        "[    0.0] Linux version 6.1.0-40-686-pae (debian-kernel@lists.debian.org)",
        "amilab-ramdisk: switching to LABEL=cloudimg-rootfs (/dev/vda, rw) init=/sbin/init",
        line,
        "[    3.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
    ]) + "\n"  # fmt: skip
    log.write_text(text)
    failure = ConsoleWatcher(log).poll()
    assert failure is not None and failure.reason == "init exec format error"
    v = classify(Observed({"Passed": False, "Failure": failure.describe(), "Checks": []}, text))
    assert v.status == FAIL and v.klass.startswith("init exec format error")
    assert v.evidence[0].line == 3
