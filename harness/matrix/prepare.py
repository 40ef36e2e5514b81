"""Before any cell runs: build the recipes the matrix names (each once), register the
catalogue kernels it names, decide which cells cannot apply (SKIP), and plan every cell
once in this thread, so the ramdisks generated for other kernels are made and registered
one at a time rather than raced by parallel cells. Anything the user named wrongly stops
the run here (exit 2), before a guest starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from builder.errors import BadInput
from builder.images.registry import ImageRecord, Registry
from harness.launch import pvgrub
from harness.launch.plan import make_plan
from harness.matrix import order
from harness.matrix.cells import Cell


def recipe_names(path: Path) -> set[str]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return set()  # not a recipe file we can read: names are then AMIs (or wrong)
    images = doc.get("images") if isinstance(doc, dict) else None
    return {r["name"] for r in images or [] if isinstance(r, dict) and "name" in r}


def resolve_images(
    refs: list[str], recipes: Path, say: Callable[[str], None], quiet: bool
) -> dict[str, ImageRecord]:
    names = recipe_names(recipes)
    registry = Registry()
    out: dict[str, ImageRecord] = {}
    for ref in refs:
        if ref in names:
            from builder.build.pipeline import build_file  # only a recipe needs the builder

            say(f"building {ref} from {recipes}")
            out[ref] = build_file(recipes, image=ref, quiet=quiet)[0]
        else:
            try:
                out[ref] = registry.find(ref, "machine")
            except BadInput:
                raise BadInput(
                    f"image {ref!r}: neither a recipe in {recipes} nor a registered AMI"
                ) from None
    return out


def resolve_kernel(ref: str, registry: Registry, say: Callable[[str], None]) -> str:
    """An AKI ID for a kernel name or ID; a catalogue name not registered yet is
    downloaded and registered (with its generated ramdisk) once."""
    if ref in pvgrub.ALIASES:
        return ref
    from builder.images.kernel_refs import find_kernel

    return find_kernel(ref, registry, say).image_id


def skip_reason(cell: Cell, image: ImageRecord) -> str:
    from harness.launch.types import TYPES

    opts = cell.option_dict
    arch = image.architecture or "x86_64"
    if opts.get("architecture", arch) != arch:
        return f"the image is {arch}"
    itype = TYPES.get(opts.get("instance_type", ""))
    if itype is not None and arch not in itype.architectures:
        return f"{itype.name} runs {'/'.join(itype.architectures)}; the image is {arch}"
    if image.virtualization_type == "hvm":
        if opts.get("firmware") == "bios" and arch == "arm64":
            return "an arm64 image boots on UEFI only"
        if opts.get("firmware") == "uefi" and arch == "i386":
            return "an i386 image boots on BIOS only"
        if cell.kernel_ref is not None:
            return "another kernel applies to paravirtual images; this one is hvm"
        if "ramdisk" in opts:
            return "a ramdisk applies to paravirtual images; this one is hvm"
    elif "firmware" in opts:
        return "firmware applies to hvm images; this one is paravirtual"
    return ""


def prepare(
    cells: list[Cell],
    recipes: Path,
    say: Callable[[str], None],
    quiet: bool = False,
    plan: bool = True,
) -> list[Cell]:
    """The cells with their images built or found and their kernels registered; with `plan`,
    each launch planned (ramdisks generated): what a static-only run does without."""
    images = resolve_images(list(dict.fromkeys(c.image for c in cells)), recipes, say, quiet)
    registry = Registry()
    akis = {
        ref: resolve_kernel(ref, registry, say)
        for ref in dict.fromkeys(c.kernel_ref for c in cells if c.kernel_ref)
    }
    out = []
    for cell in cells:
        image = images[cell.image]
        ref = akis.get(cell.kernel_ref) if cell.kernel_ref else None
        cell = cell.resolved(image_id=image.image_id, kernel_ref=ref,
                             architecture=image.architecture,
                             vcpus=order.vcpus(cell.option_dict, image.architecture))  # fmt: skip
        cell = cell.resolved(skip=skip_reason(cell, image))
        if not cell.skip and plan:
            opts = cell.option_dict
            try:
                make_plan(
                    image,
                    ref,
                    opts.get("ramdisk"),
                    opts.get("firmware"),
                    disk_bus=opts.get("disk_bus", "virtio"),
                    registry=registry,
                )
            except BadInput as e:
                raise BadInput(f"cell {cell.key}: {e}") from None
        out.append(cell)
    return out
