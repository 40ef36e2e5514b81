"""Kernels from files (`amilab register-kernel`): a bzImage with its modules, or a .deb.

What a kernel build leaves (arch/x86/boot/bzImage and a `make modules_install
INSTALL_MOD_PATH=X` tree, X/lib/modules/<release>/) or a Debian kernel package is checked and
stored once, by the vmlinuz's digest, under amilab's home (not the cache: nothing could fetch
it again), in the shape of an unpacked package: boot/vmlinuz-<release>, boot/config-<release>
and lib/modules/<release>/ with depmod run. An AKI registered from it records that folder;
`kernel.kernel_for_record` reads it back as a `Kernel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder import paths
from builder.build import kernel as kernel_mod
from builder.errors import BadInput
from builder.images.records import ImageRecord

STORE = "kernels"  # under amilab_home(): one folder per vmlinuz digest


def store_root() -> Path:
    return paths.amilab_home() / STORE


def stored_kernel(rec: ImageRecord, own: dict[str, Any]) -> kernel_mod.Kernel:
    """The Kernel of an AKI registered from files; BadInput when they were removed."""
    folder = Path(str(own.get("store", "")))
    if not folder.is_absolute() or not kernel_mod._complete(folder):
        raise BadInput(
            f"{rec.image_id}: the kernel files register-kernel stored ({folder}) are gone; "
            "register the kernel again"
        )
    defn = kernel_mod.KernelDefinition(
        name=rec.name,
        package=str(own.get("package") or ""),
        ramdisk_modules=tuple(own.get("ramdisk_modules") or ()),
        cmdline=rec.kernel_settings.cmdline or "console=ttyS0",
    )
    return kernel_mod._kernel_from(
        folder, defn, defn.package, str(own.get("version") or ""), suite=""
    )
