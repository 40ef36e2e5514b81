"""Kernels named as a launch or a build names them: an AKI's ID or name, or a kernel of the
catalogue (kernels/*.yaml) by its definition's name, fetched and registered on first use
(with its generated ramdisk) wherever a kernel is named: smoke, boot, add-modules,
run-instances, the API's KernelId, the matrix."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from builder.build import kernel as kernel_mod
from builder.build.kernel_catalogue import definition, load_catalogue
from builder.errors import BadInput
from builder.ids import file_sha256
from builder.images import factory
from builder.images.image_files import work_dir
from builder.images.records import ImageRecord, RamdiskSettings
from builder.images.registry import Registry, store_artifact


def find_kernel(
    ref: str, registry: Registry | None = None, say: Callable[[str], None] | None = None
) -> ImageRecord:
    """The AKI `ref` names: a registered one (ID or name), else the newest registered from
    the catalogue kernel of that name, else that kernel fetched and registered now. Neither
    is BadInput (exit 2) naming the catalogue."""
    registry = registry or Registry()
    try:
        return registry.find(ref, "kernel")
    except BadInput as e:
        catalogue = load_catalogue()
        if ref not in catalogue:
            if ref[:4] in ("aki-", "ari-", "ami-") or "no such" not in str(e):
                raise  # an ID, or a registered image that is not a kernel: that error
            raise BadInput(f"{e}; nor is {ref!r} a catalogue kernel (amilab kernels)") from None
    for aki in reversed(registry.list("kernel")):
        if aki.kernel_settings.definition == ref:
            return aki
    if say is not None:
        say(f"registering kernel {ref} from the catalogue")
    aki, _ = register_catalogue_kernel(ref, registry)
    return aki


def register_catalogue_kernel(
    name: str, registry: Registry | None = None, log: Path | None = None
) -> tuple[ImageRecord, ImageRecord]:
    """The AKI and generated ARI of a catalogue kernel, as a build's Register step makes them
    (the kernel is downloaded and unpacked on first use, then cached), without building an
    image: what the tests and bench/kernels.py register other releases' kernels with."""
    from builder.build import ramdisk as ramdisk_mod
    from builder.images.records import KernelSettings

    registry = registry or Registry()
    k = kernel_mod.resolve_kernel(definition(name), log=log)
    work = work_dir("kernel")
    try:
        vmlinuz = work / "vmlinuz"
        shutil.copy2(k.vmlinuz, vmlinuz)
        kernel_path = store_artifact(vmlinuz, k.digest, ".vmlinuz")
        initrd = ramdisk_mod.build_generated(k, work / "initrd.img")
        digest = file_sha256(initrd)
        initrd_path = store_artifact(initrd, digest, ".initrd")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    aki = factory.content_image(
        k.digest, f"{k.name}-{k.release}", str(kernel_path),
        KernelSettings(definition=k.name, package=k.package, cmdline=k.cmdline),
        release=k.release, version=k.version, description=f"{k.package} {k.version}",
        architecture=k.architecture,
    )  # fmt: skip
    ari = factory.content_image(
        digest, f"initrd-{k.release}-generated", str(initrd_path),
        RamdiskSettings(kind="generated", built_for=k.aki_id), release=k.release,
        description=f"generated ramdisk for {k.release}", architecture=k.architecture,
    )  # fmt: skip
    aki, ari = registry.register([aki, ari])
    return aki, ari
