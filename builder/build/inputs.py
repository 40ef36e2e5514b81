"""What goes into a build, as one digest: an unchanged recipe with unchanged inputs finds its
AMI already registered instead of being built again (the AMI is its content).

The inputs are the recipe's digest, the engine, the content of every element the recipe
resolves to (files, modes, link targets), the kernel (the exact package version the index
resolves its definition to, or the registered AKI's digest) and the package index the root
tree's packages are resolved from (the digest of the private apt index's Release files for
the recipe's suite: the same index resolves the same package set to the same versions, a
changed one may not). The versions actually installed are recorded from the built tree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import paths
from builder.build import elements
from builder.build import kernel as kernel_mod
from builder.build.arch import of as arch_of
from builder.build.kernel_catalogue import load_catalogue
from builder.build.recipe import LoadedRecipe
from builder.images.registry import ImageRecord, Registry

_VERSION = "1"  # changes when what a build makes of the same inputs changes
RECORD_KEY = "build_inputs"  # in an AMI record's extra


@dataclass(frozen=True)
class BuildInputs:
    recipe_digest: str
    engine: str
    elements_digest: str
    kernel: str  # package=version, or the AKI's ID and digest
    package_index: str  # digest of the suite's Release files in the private apt index

    @property
    def digest(self) -> str:
        blob = json.dumps({"v": _VERSION, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def elements_digest(found: list[elements.Element]) -> str:
    """Every file of every element, by path relative to its element, mode and content."""
    h = hashlib.sha256()
    for element in sorted(found, key=lambda e: e.name):
        base = Path(element.path)
        h.update(f"element {element.name}\n".encode())
        for directory, dirs, files in os.walk(base):
            dirs.sort()
            links = [d for d in dirs if os.path.islink(os.path.join(directory, d))]
            for name in sorted(files) + links:
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, base)
                st = os.lstat(path)
                h.update(f"{rel}\0{st.st_mode:o}\0".encode())
                if os.path.islink(path):
                    h.update(os.readlink(path).encode())
                else:
                    with open(path, "rb") as f:
                        h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def index_digest(suite: str, log: Path | None = None, architecture: str = "x86_64") -> str:
    """The private apt index's state for `suite` (fetched when missing or old): its Release
    files name the digest of every Packages file, so equal Release files mean an equal
    index."""
    lists = kernel_mod.fresh_index(suite, log, architecture)
    h = hashlib.sha256()
    found = sorted(p for p in lists.glob("*Release") if p.is_file())
    for path in found:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest() if found else ""


def kernel_input(loaded: LoadedRecipe, log: Path | None = None) -> str:
    """The exact kernel: the package version the index resolves the definition to (nothing
    is downloaded), or the registered AKI's digest."""
    r = loaded.recipe
    if r.kernel.startswith("aki-"):
        rec = Registry().get(r.kernel)
        return f"{r.kernel}:{rec.digest if rec else ''}"
    defn = load_catalogue()[r.kernel]
    found = kernel_mod.resolve_version(defn, r.release, log=log)
    parts = ",".join(f"{p}={v}" for p, v in found.parts)
    return f"{found.package}={found.version}" + (f"+{parts}" if parts else "")


def of_recipe(loaded: LoadedRecipe, log: Path | None = None) -> BuildInputs:
    r = loaded.recipe
    found = elements.resolve(r.elements, paths.elements_path(), loaded.where)
    kernel = kernel_input(loaded, log)
    index = index_digest(r.release, log, r.architecture)
    recipe_digest = r.digest
    if r.extra_modules:  # their content, not only their paths (digests stay as they were without)
        from builder.build.out_of_tree import inputs_digest

        both = f"{r.digest}\0{inputs_digest(loaded)}"
        recipe_digest = hashlib.sha256(both.encode()).hexdigest()
    return BuildInputs(recipe_digest, r.engine, elements_digest(found), kernel, index)


def registered(inputs: BuildInputs) -> ImageRecord | None:
    """The AMI an earlier build of exactly these inputs registered, when its disk is still
    stored; None otherwise."""
    want = inputs.digest
    for rec in Registry().list("machine"):
        recorded = rec.extra.get(RECORD_KEY) or {}
        if want != recorded.get("InputsDigest") and want not in recorded.get("AlsoFrom", []):
            continue
        if all(Path(p).exists() for p in rec.locations.values()):
            return rec
    return None


def add_inputs(registry: Registry, rec: ImageRecord, digest: str) -> None:
    """A build from other inputs made an AMI's very disk (say the package index moved on
    but resolved nothing new): those inputs find it too from now on (`AlsoFrom`)."""

    def change(r: ImageRecord) -> None:
        recorded = r.extra.setdefault(RECORD_KEY, {})
        if digest != recorded.get("InputsDigest") and digest not in recorded.get("AlsoFrom", []):
            recorded["AlsoFrom"] = [*recorded.get("AlsoFrom", []), digest]

    registry.update(rec.image_id, change)


def installed_packages(root: Path, architecture: str = "x86_64") -> dict[str, str]:
    """name → version of every package dpkg lists as installed in the tree."""
    status = root / "var/lib/dpkg/status"
    out: dict[str, str] = {}
    if not status.is_file():
        return out
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            arch = fields.get("Architecture", "")
            native = (arch_of(architecture).deb, "", "all")
            name = fields["Package"] + (f":{arch}" if arch not in native else "")
            out[name] = fields.get("Version", "")
    return dict(sorted(out.items()))
