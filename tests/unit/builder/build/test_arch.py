"""Architectures in recipes, kernel definitions, the ramdisk's busybox and GRUB's platforms."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.build import apt_index, arch, bootloader, deb_control, kernel, ramdisk
from builder.build.recipe import load_recipes
from tests.conftest import ROOT


def test_shipped_recipes_name_their_architectures() -> None:
    found = {r.recipe.name: r.recipe for r in load_recipes(ROOT / "architectures.yaml")}
    assert found["debian-i386-pv"].architecture == "i386"
    assert found["debian-i386-hvm"].boot_mode == "bios"
    assert found["debian-arm64-hvm"].architecture == "arm64"
    assert found["debian-arm64-hvm"].boot_mode == "uefi"
    # the default recipes stay x86_64 (the key's default)
    assert {r.recipe.architecture for r in load_recipes(ROOT / "build.yaml")} == {"x86_64"}


def test_catalogue_has_i386_and_arm64_kernels_per_suite() -> None:
    cat = kernel.load_catalogue()
    for suite in ("bullseye", "bookworm"):
        d = cat[f"debian-686-pae-{suite}"]
        assert (d.architecture, d.package, d.suite) == ("i386", "linux-image-686-pae", suite)
    amd64_suites = {d.suite for d in cat.values() if d.architecture == "x86_64" and d.suite}
    arm64 = {d.suite: d for d in cat.values() if d.architecture == "arm64"}
    assert amd64_suites <= set(arm64), amd64_suites - set(arm64)
    for d in arm64.values():
        assert d.package == "linux-image-cloud-arm64" and "console=ttyAMA0" in d.cmdline
    # definitions written before architectures are x86_64
    assert cat["debian-cloud"].architecture == "x86_64"


def test_metapackage_named_with_digits_is_not_an_exact_image() -> None:
    # 686-pae starts with digits: still a flavour's metapackage, not linux-image-<version>
    assert not deb_control.EXACT_IMAGE.fullmatch("linux-image-686-pae")
    assert deb_control.EXACT_IMAGE.fullmatch("linux-image-6.1.0-40-686-pae")
    assert deb_control.EXACT_IMAGE.fullmatch("linux-image-6.12.57+deb13-cloud-arm64")


def test_private_apt_index_per_architecture(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    amd64, arm64 = kernel.private_apt("bookworm"), kernel.private_apt("bookworm", "arm64")
    assert amd64.base.name == "bookworm" and arm64.base.name == "bookworm-arm64"
    opts = arm64.options()
    assert "APT::Architecture=arm64" in opts and "APT::Architectures=arm64" in opts


def test_records_default_to_x86_64() -> None:
    assert arch.of(None).name == "x86_64" and arch.of("").deb == "amd64"
    assert arch.of("i386").qemu == "qemu-system-x86_64"
    assert arch.of("arm64").qemu == "qemu-system-aarch64"


def test_static_elf_32_and_64_bit(tmp_path: Path) -> None:
    host = Path("/bin/busybox")
    if not host.exists():
        pytest.skip("busybox-static is not installed")
    assert ramdisk._is_static_elf(host)
    # a 32-bit little-endian ELF header with one PT_LOAD and no PT_INTERP
    elf32 = bytearray(52 + 32)
    elf32[:6] = b"\x7fELF\x01\x01"
    elf32[28:32] = (52).to_bytes(4, "little")  # e_phoff
    elf32[42:44] = (32).to_bytes(2, "little")  # e_phentsize
    elf32[44:46] = (1).to_bytes(2, "little")  # e_phnum
    elf32[52:56] = (1).to_bytes(4, "little")  # PT_LOAD
    p = tmp_path / "bb32"
    p.write_bytes(bytes(elf32))
    assert ramdisk._is_static_elf(p)
    elf32[52:56] = (3).to_bytes(4, "little")  # PT_INTERP: dynamic
    p.write_bytes(bytes(elf32))
    assert not ramdisk._is_static_elf(p)


def test_grub_platforms_per_architecture() -> None:
    assert bootloader.PLATFORMS["i386"] == ("i386-pc",)
    assert bootloader.PLATFORMS["arm64"] == ("arm64-efi",)
    assert set(bootloader.PLATFORMS["x86_64"]) == {"i386-pc", "x86_64-efi"}
    for platforms in bootloader.PLATFORMS.values():
        assert set(platforms) <= set(bootloader.MODULES)


def test_foreign_architecture_without_binfmt_is_exit_3(tmp_path: Path, monkeypatch) -> None:
    # a binfmt_misc that is not there and cannot be mounted (a path under tmp)
    monkeypatch.setattr(arch, "BINFMT", tmp_path / "binfmt_misc")
    monkeypatch.setattr(arch, "host_runs", lambda a: False)
    with pytest.raises(arch.EnvironmentProblem) as e:
        arch.ensure_foreign(arch.of("arm64"))
    assert e.value.exit_code == 3 and "\n" not in str(e.value)
    assert "binfmt_misc" in str(e.value)


def test_index_without_security_makes_the_base_from_the_same_sources(
    tmp_path: Path, monkeypatch
) -> None:
    from builder.build import mirror, rootfs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    here = mirror.Mirror("http://m/debian", "http://m/debian-security")
    monkeypatch.setattr(apt_index, "host_mirror", lambda: here)
    apt = kernel.private_apt("bookworm", "i386")
    apt.prepare()
    reason = "Failed to fetch http://m/debian-security/dists/bookworm-security/main/binary-i386/"
    assert not apt._without_security(reason, None)  # no index of the release itself: no
    (apt.lists / "m_debian_dists_bookworm_main_binary-i386_Packages").write_text("")
    assert apt._without_security(reason, None)
    assert not apt._without_security("Failed to fetch http://m/debian/dists/bookworm/x", None)
    with_security = apt.apt_lines()
    (apt.base / apt_index.NO_SECURITY).touch()
    without = apt.apt_lines()
    assert len(with_security) == 3 and without == with_security[:2]
    key = rootfs.base_key("bookworm", ["a"], "", "i386", without)
    assert key != rootfs.base_key("bookworm", ["a"], "", "i386", with_security)
