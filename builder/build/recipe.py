"""Recipes: one image definition each, several per YAML file (`images:` list)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from builder.build.arch import NAMES as ARCHITECTURES
from builder.build.engines import ENGINES
from builder.build.schema import (
    Bool,
    Choice,
    ListOf,
    Located,
    MapOf,
    Section,
    Size,
    Str,
    _Ctx,
    build,
    help_rows,
    key,
    load_nodes,
)
from builder.disk.formats import format_names
from builder.errors import BadInput, RecipeError

NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
PACKAGE = r"[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?"
MODULE = r"[A-Za-z0-9_-]{1,64}"
DKMS_PACKAGE = r"[a-z0-9][a-z0-9+.-]*-dkms"
RELEASES = ("bookworm", "trixie")
FORMATS = format_names("recipe")


def _label_ok(label: str) -> str | None:
    return "an ext4 label is at most 16 bytes" if len(label.encode()) > 16 else None


def _formats_ok(formats: tuple[str, ...]) -> str | None:
    return None if formats else "list at least one format"


@dataclass(frozen=True)
class Disk:
    size: int = key(Size(256 << 20, 2 << 40), "virtual size of the disk", 2 << 30)
    label: str = key(
        Str(r"[A-Za-z0-9._-]+", "letters, digits, . _ -"),
        "ext4 label of the root filesystem (also used in fstab and root=LABEL=)",
        "cloudimg-rootfs",
        check=_label_ok,
    )
    partitioning: str = key(
        Choice(("auto", "none", "mbr", "gpt")),
        "none: the filesystem fills the disk (EC2 PV style); mbr/gpt: partitioned; "
        "auto: none for paravirtual, gpt for hvm",
        "auto",
    )
    formats: tuple[str, ...] = key(
        ListOf(Choice(FORMATS)), "disk formats to write and register", ("raw",), check=_formats_ok
    )


@dataclass(frozen=True)
class CommandCheck:
    name: str = key(Str(NAME, "lowercase name"), "name of the check in reports", required=True)
    run: str = key(Str(), "shell command run in the guest as root", required=True)
    expect: str = key(Str(), "regular expression its output must match", ".*")


@dataclass(frozen=True)
class Checks:
    modules: tuple[str, ...] = key(
        ListOf(Str(MODULE, "a kernel module name")),
        "modules that must load with modprobe in the guest",
        (),
    )
    metadata: bool = key(
        Bool(), "check kernel-id/ramdisk-id at 169.254.169.254 from inside the guest", True
    )
    commands: tuple[CommandCheck, ...] = key(
        ListOf(Section(CommandCheck)), "custom commands with an expected output regex", ()
    )
    probes: dict[str, str] = key(
        MapOf(MODULE, "out-of-tree module names", Str(r"[^\n]+", "one line")),
        "per out-of-tree module (dkms, extra-modules): a shell command that must exit 0 once "
        "it is loaded, e.g. v4l2loopback: test -c /dev/video0",
    )


@dataclass(frozen=True)
class Recipe:
    name: str = key(Str(NAME, "lowercase letters, digits, . _ -"), "image name", required=True)
    description: str = key(Str(max_len=255), "free text shown by `amilab images`", "")
    release: str = key(Choice(RELEASES), "Debian release of the base root filesystem", "bookworm")
    architecture: str = key(
        Choice(ARCHITECTURES),
        "machine architecture (EC2's name): i386 trees are made natively, arm64 ones through "
        "qemu-user-static; the kernel must be of the same architecture",
        "x86_64",
    )
    elements: tuple[str, ...] = key(
        ListOf(Str(NAME, "an element name")),
        "elements to run (diskimage-builder layout), dependencies added",
        (),
    )
    packages: tuple[str, ...] = key(
        ListOf(Str(PACKAGE, "a Debian package name, optionally =version")),
        "Debian packages installed into the image",
        (),
    )
    environment: dict[str, str] = key(
        MapOf(r"[A-Za-z_][A-Za-z0-9_]*", "variable names", Str()),
        "environment variables for element scripts",
    )
    kernel: str = key(
        Str(r"[a-z0-9][a-z0-9._-]*", "a kernel name from kernels/ or an aki- ID"),
        "kernel (AKI) the image is built and booted with",
        "debian-cloud",
    )
    ramdisk: str = key(
        Choice(("generated", "distro", "none")),
        "generated: amilab's busybox initrd; distro: the image's initramfs-tools; none",
        "generated",
    )
    modules: str = key(
        Choice(("install", "omit")),
        "install the kernel's /lib/modules/<release> into the image, or leave it out",
        "install",
    )
    dkms: tuple[str, ...] = key(
        ListOf(Str(DKMS_PACKAGE, "a Debian *-dkms package")),
        "DKMS packages from the image's suite, built by dkms in the image for its kernel "
        "(with that kernel's linux-headers from the kernel's own suite, removed afterwards)",
        (),
    )
    extra_modules: tuple[str, ...] = key(
        ListOf(Str(r"[^\n\0]+", "a path")),
        "out-of-tree modules: a source tree with a Makefile or Kbuild (built in the image "
        "against the kernel's headers) or a prebuilt .ko, installed under "
        "/lib/modules/<release>/extra; relative paths are read from the recipe's folder",
        (),
        name="extra-modules",
    )
    virtualization: str = key(
        Choice(("paravirtual", "hvm")),
        "paravirtual: direct kernel boot of the AKI; hvm: firmware boots the disk",
        "paravirtual",
    )
    kernel_cmdline: str = key(
        Str(r"[^\n]*", "one line"),
        "extra kernel command line (root= and the serial console are added)",
        "",
    )
    boot: str = key(
        Choice(("bios", "uefi", "hybrid")),
        "hvm: the firmware the disk's GRUB boots on (hybrid: both SeaBIOS and OVMF, "
        "as cloud images ship); ignored for paravirtual",
        "hybrid",
    )
    disk: Disk = key(Section(Disk), "disk layout and output formats")
    engine: str = key(
        Choice(tuple(ENGINES)),
        "; ".join(f"{name}: {cls.summary}" for name, cls in ENGINES.items()),
        "native",
    )
    checks: Checks = key(Section(Checks), "what `amilab smoke` verifies in the guest")

    @property
    def partitioning(self) -> str:
        if self.disk.partitioning != "auto":
            return self.disk.partitioning
        return "gpt" if self.virtualization == "hvm" else "none"

    @property
    def boot_mode(self) -> str | None:
        return self.boot if self.virtualization == "hvm" else None

    @property
    def digest(self) -> str:
        """Digest of everything that defines the image (not where the file lives)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    where: Located


def load_recipes(path: Path) -> list[LoadedRecipe]:
    """Parse and validate every recipe in a file; raises RecipeError (exit 2) on the first fault."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{shown}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{shown}: cannot read recipe file: {e}") from None
    root = load_nodes(shown, text)
    if not isinstance(root, yaml.MappingNode):
        raise RecipeError(shown, root.start_mark.line + 1, "images", "expected `images:` at top")
    images_node = None
    for knode, vnode in root.value:
        if knode.value != "images":
            raise RecipeError(
                shown, knode.start_mark.line + 1, str(knode.value), "unknown key; allowed: images"
            )
        images_node = vnode
    if images_node is None:
        raise RecipeError(shown, 1, "images", "required key is missing")
    if not isinstance(images_node, yaml.SequenceNode) or not images_node.value:
        raise RecipeError(
            shown, images_node.start_mark.line + 1, "images", "expected a non-empty list"
        )
    out: list[LoadedRecipe] = []
    names: set[str] = set()
    for node in images_node.value:
        ctx = _Ctx(shown, {})
        recipe = build(Recipe, node, ctx)
        where = Located(shown, ctx.lines | {"": node.start_mark.line + 1})
        if recipe.name in names:
            raise where.error("name", f"image {recipe.name!r} is defined twice in this file")
        names.add(recipe.name)
        _cross_check(recipe, where)
        out.append(LoadedRecipe(recipe, where))
    return out


def _cross_check(recipe: Recipe, where: Located) -> None:
    if recipe.virtualization == "hvm" and recipe.partitioning == "none":
        raise where.error(
            "disk.partitioning", "an hvm image boots its own bootloader: use mbr or gpt"
        )
    if recipe.virtualization == "hvm" and recipe.architecture == "i386" and recipe.boot != "bios":
        raise where.error("boot", "an i386 hvm image boots on BIOS only (GRUB i386-pc): use bios")
    if recipe.virtualization == "hvm" and recipe.architecture == "arm64" and recipe.boot != "uefi":
        raise where.error("boot", "an arm64 hvm image boots on UEFI only: use uefi")
    if recipe.engine == "diskimage-builder" and recipe.architecture != "x86_64":
        raise where.error(
            "engine", "diskimage-builder builds x86_64 here (untested for others): use native"
        )
    if (recipe.dkms or recipe.extra_modules) and recipe.modules == "omit":
        raise where.error(
            "dkms" if recipe.dkms else "extra-modules",
            "out-of-tree modules go beside the kernel's own: use modules: install",
        )
    if recipe.modules == "omit" and recipe.ramdisk == "distro":
        raise where.error(
            "ramdisk", "distro needs the modules in the image; use generated with modules: omit"
        )


def select(recipes: list[LoadedRecipe], name: str | None) -> list[LoadedRecipe]:
    if name is None:
        return recipes
    chosen = [r for r in recipes if r.recipe.name == name]
    if not chosen:
        known = ", ".join(r.recipe.name for r in recipes)
        raise BadInput(f"--image {name}: no such recipe; this file has: {known}")
    return chosen


def keys_help() -> str:
    rows = help_rows(Recipe)
    width = max(len(r[0]) for r in rows)
    lines = ["recipe keys (build.yaml: images: [ {key: value, ...}, ... ]):"]
    for k, allowed, default, text in rows:
        lines.append(f"  {k.ljust(width)}  {text}")
        lines.append(f"  {' ' * width}    allowed: {allowed}; default: {default}")
    return "\n".join(lines)
