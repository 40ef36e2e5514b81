"""Another kernel for an image whose own ramdisk is generated: a ramdisk made for that kernel.

The kernel is bookworm's real cloud kernel from the shared cache; the image and its own
kernel and ramdisk are records over stand-in files (the plan reads none of them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.build import kernel as kernel_mod
from builder.build import ramdisk as ramdisk_mod
from builder.images import factory
from builder.images.records import KernelSettings, LaunchSettings, RamdiskSettings
from builder.images.registry import Registry
from harness.launch.plan import make_plan


@pytest.fixture(scope="module")
def bookworm() -> kernel_mod.Kernel:
    return kernel_mod.resolve_kernel(kernel_mod.definition("debian-cloud-bookworm"))


def _registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
              k: kernel_mod.Kernel) -> Registry:  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home"))
    reg = Registry()
    stand_in = tmp_path / "file"
    stand_in.write_bytes(b"x")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 1024)
    own_aki = factory.content_image("0" * 64, "k-own", str(stand_in), KernelSettings(),
                                    release="5.0.0-own")  # fmt: skip
    own_ari = factory.content_image("1" * 64, "r-own", str(stand_in),
                                    RamdiskSettings(kind=kind, built_for=own_aki.image_id),
                                    release="5.0.0-own")  # fmt: skip
    other = factory.content_image(
        k.digest, f"debian-cloud-bookworm-{k.release}", str(k.vmlinuz),
        KernelSettings(definition="debian-cloud-bookworm", package=k.package, cmdline=k.cmdline),
        release=k.release, version=k.version,
    )  # fmt: skip
    bare = factory.content_image("2" * 64, "k-bare", str(stand_in), KernelSettings(),
                                 release="5.0.0-bare")  # fmt: skip
    pv = factory.machine_image(
        factory.Registration("pv", "paravirtual", "/dev/sda1", kernel_id=own_aki.image_id,
                             ramdisk_id=own_ari.image_id),
        "3" * 64, LaunchSettings(root_label="root"), {"raw": str(disk)},
    )  # fmt: skip
    reg.register([own_aki, own_ari, other, bare, pv])
    return reg


def test_generated_for_the_other_kernel_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bookworm: kernel_mod.Kernel
) -> None:
    reg = _registry(tmp_path, monkeypatch, "generated", bookworm)
    plan = make_plan(reg.find("pv"), kernel_ref=bookworm.aki_id, registry=reg)
    ari = plan.ramdisk
    assert ari is not None and ari.image_type == "ramdisk"
    assert ari.ramdisk_settings.kind == "generated"
    assert ari.ramdisk_settings.built_for == bookworm.aki_id
    assert ari.kernel_release == bookworm.release
    assert plan.notes == [f"ramdisk {ari.image_id} was generated for {bookworm.aki_id} "
                          f"({bookworm.release})"]  # fmt: skip
    assert plan.cmdline.startswith("root=LABEL=root ")
    # its bytes: what the build's generated ramdisk for that kernel is, hence the same ID
    again = tmp_path / "again"
    ramdisk_mod.build_generated(bookworm, again)
    assert ari.image_id == ramdisk_mod.ari_id(again)
    assert Path(ari.image_location).read_bytes() == again.read_bytes()
    # the second launch finds it registered
    second = make_plan(reg.find("pv"), kernel_ref=bookworm.aki_id, registry=reg)
    assert second.ramdisk_id == ari.image_id
    assert second.notes == [f"ramdisk {ari.image_id} is the one built for {bookworm.aki_id}"]
    assert len(reg.list("ramdisk")) == 2
    # --ramdisk none and --ramdisk ID still win
    assert make_plan(reg.find("pv"), kernel_ref=bookworm.aki_id, ramdisk_ref="none",
                     registry=reg).ramdisk is None  # fmt: skip
    named = make_plan(reg.find("pv"), kernel_ref=bookworm.aki_id, ramdisk_ref="r-own",
                      registry=reg)  # fmt: skip
    assert named.ramdisk is not None and named.ramdisk.name == "r-own"


def test_other_kinds_and_kernels_without_modules_keep_the_images_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bookworm: kernel_mod.Kernel
) -> None:
    reg = _registry(tmp_path, monkeypatch, "distro", bookworm)
    plan = make_plan(reg.find("pv"), kernel_ref=bookworm.aki_id, registry=reg)
    assert plan.ramdisk is not None and plan.ramdisk.name == "r-own"
    assert "no ramdisk is registered" in plan.notes[0]
    assert len(reg.list("ramdisk")) == 1

    reg = _registry(tmp_path / "2", monkeypatch, "generated", bookworm)
    plan = make_plan(reg.find("pv"), kernel_ref="k-bare", registry=reg)
    assert plan.ramdisk is not None and plan.ramdisk.name == "r-own"
    assert "none could be generated" in plan.notes[0]
