"""The kernel catalogue: `kernels/*.yaml` definitions, each naming a Debian kernel package
(usually a metapackage such as linux-image-cloud-amd64) and the suite it comes from, strictly
validated as recipes are (every key declared once, errors with file:line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from builder import paths
from builder.build.arch import NAMES as ARCHITECTURES
from builder.build.schema import Choice, ListOf, Located, Str, _Ctx, build, key, load_nodes
from builder.errors import BadInput, RecipeError

NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
PACKAGE = r"[a-z0-9][a-z0-9+.-]+"
MODULE = r"[A-Za-z0-9_-]{1,64}"
# suites a definition may name: what the machine's mirror carries kernels for
SUITES = (
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "forky",
    "sid",
)
DEFAULT_RELEASE = "bookworm"  # the recipe's default release, for suite-less definitions


@dataclass(frozen=True)
class KernelDefinition:
    """One `kernels/*.yaml` file; every key is declared once (as recipes do)."""

    name: str = key(Str(NAME, "lowercase letters, digits, . _ -"), "kernel name", required=True)
    package: str = key(
        Str(PACKAGE, "a Debian binary package name"),
        "Debian kernel package or metapackage, resolved to an exact version at build time",
        required=True,
    )
    suite: str = key(
        Choice(SUITES),
        "Debian suite the package is resolved in; default: the recipe's release",
        "",
    )
    description: str = key(Str(max_len=255), "free text shown by `amilab kernels`", "")
    ramdisk_modules: tuple[str, ...] = key(
        ListOf(Str(MODULE, "a kernel module name")),
        "driver modules the generated ramdisk carries (built-ins are skipped)",
        (),
    )
    cmdline: str = key(Str(max_len=1024), "default kernel command line", "console=ttyS0")
    architecture: str = key(
        Choice(ARCHITECTURES), "the kernel's architecture (EC2's name); its packages' too", "x86_64"
    )


@dataclass(frozen=True)
class LoadedDefinition:
    definition: KernelDefinition
    where: Located


def load_definition(path: Path) -> LoadedDefinition:
    """Parse and strictly validate one kernel definition file (RecipeError names file:line)."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{shown}: cannot read kernel definition: {e}") from None
    node = load_nodes(shown, text)
    if not isinstance(node, yaml.MappingNode):
        raise RecipeError(shown, node.start_mark.line + 1, "kernel", "expected a mapping of keys")
    ctx = _Ctx(shown, {})
    defn = build(KernelDefinition, node, ctx)
    return LoadedDefinition(defn, Located(shown, ctx.lines))


def load_catalogue_located() -> dict[str, LoadedDefinition]:
    """Every definition in kernels_dirs(), keyed by name; a name defined twice is an error."""
    out: dict[str, LoadedDefinition] = {}
    for directory in paths.kernels_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.yaml")):
            loaded = load_definition(path)
            name = loaded.definition.name
            if name in out:
                first = out[name].where.path
                raise loaded.where.error("name", f"kernel {name!r} is already defined in {first}")
            out[name] = loaded
    return out


def load_catalogue() -> dict[str, KernelDefinition]:
    return {name: ld.definition for name, ld in load_catalogue_located().items()}


def definition(name: str) -> KernelDefinition:
    catalogue = load_catalogue()
    if name not in catalogue:
        known = ", ".join(sorted(catalogue)) or "none"
        raise BadInput(f"kernel {name!r} is not in the catalogue; known kernels: {known}")
    return catalogue[name]


def suite_of(defn: KernelDefinition, release: str = DEFAULT_RELEASE) -> str:
    """The suite a definition resolves in: its own, or the recipe's release."""
    return defn.suite or release
