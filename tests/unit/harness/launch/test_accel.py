"""Accelerator choice: KVM only where a probe guest really runs under it."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput, EnvironmentProblem
from harness.launch import accel
from tests.conftest import need


def test_cpu_flags() -> None:
    assert accel.cpu_virt_flag("processor: 0\nflags\t\t: fpu vme vmx sse\n") == "vmx"
    assert accel.cpu_virt_flag("flags : fpu svm\n") == "svm"
    assert accel.cpu_virt_flag("flags : fpu hypervisor sse2\n") is None
    assert accel.cpu_virt_flag("") is None


def test_probe_bios_layout(tmp_path: Path) -> None:
    image = accel.probe_bios(tmp_path / "p.bin").read_bytes()
    assert len(image) == 65536
    assert image[-16:-13] == bytes([0xE9, 0x0D, 0x00])  # reset vector: jmp to offset 0
    assert image.startswith(bytes([0xFA]))  # cli, the probe's first instruction


def test_probe_runs_under_tcg() -> None:
    """The probe goes through real, protected and long mode; TCG must run it to the end."""
    need("qemu-system-x86_64", "qemu-system-x86")
    assert accel.probe("tcg") is None


def test_explicit_tcg() -> None:
    assert accel.choose("tcg").name == "tcg"


def test_auto_falls_back_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_kvm_problem", lambda: "the CPU advertises neither vmx nor svm")
    chosen = accel.choose("auto")
    assert chosen.name == "tcg" and "vmx" in chosen.reason
    assert "TCG" in chosen.describe()


def test_kvm_demanded_where_it_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_kvm_problem", lambda: "a probe guest did not finish within 3 s")
    with pytest.raises(EnvironmentProblem, match="probe guest") as err:
        accel.choose("kvm")
    assert err.value.exit_code == 3


def test_auto_takes_working_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_kvm_problem", lambda: None)
    assert accel.choose("auto").name == "kvm"
    assert accel.choose("kvm").name == "kvm"


def test_unknown_accelerator() -> None:
    with pytest.raises(BadInput):
        accel.choose("hax")


def test_libguestfs_environment() -> None:
    env = accel.libguestfs_environment(accel.Accelerator("tcg", "x"))
    assert env == {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    assert accel.libguestfs_environment(accel.Accelerator("kvm", "x")) == {}
