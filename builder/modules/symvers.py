"""What a kernel offers modules: its vermagic and every exported symbol with its CRC, export
kind and namespace, from `Module.symvers` (vmlinux's and the in-tree modules' exports alike).

Module.symvers is ~25,000 lines; parsing it each time would cost ~40 ms per kernel, so it is
parsed once per kernel package into a compact index (a pickle in the cache, written beside
and renamed) that loads in a few milliseconds, and kept in memory for the process.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from builder import paths
from builder.build.kernel_tree import Kernel
from builder.errors import BuildFailed
from builder.modules.elf import SUFFIXES, read_module

_INDEX_VERSION = 2


class Export(NamedTuple):
    """A tuple, not a dataclass: 25,000 of them unpickle in ~15 ms rather than ~100 ms."""

    crc: int | None  # None: the kernel has no modversions
    gpl_only: bool
    namespace: str
    owner: str  # vmlinux or the in-tree module exporting it


@dataclass(frozen=True)
class KernelIndex:
    release: str
    vermagic: str
    modversions: bool
    btf_modules: bool  # CONFIG_DEBUG_INFO_BTF_MODULES: the kernel reads modules' BTF
    module_sig_force: bool
    symbols: dict[str, Export] = field(default_factory=dict)

    @property
    def flags(self) -> str:
        """vermagic without the release: what must match even where CRCs are checked."""
        return self.vermagic.split(" ", 1)[1].strip() if " " in self.vermagic else ""


def parse_symvers(text: str) -> dict[str, Export]:
    """Module.symvers lines: `crc<TAB>symbol<TAB>module<TAB>export kind[<TAB>namespace]`."""
    out: dict[str, Export] = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < 4:
            continue
        crc = int(cols[0], 16) if cols[0].startswith("0x") else None
        ns = cols[4].strip().strip('"') if len(cols) > 4 else ""
        out[cols[1]] = Export(crc, cols[3].startswith("EXPORT_SYMBOL_GPL"), ns, cols[2])
    return out


def parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def kernel_vermagic(kernel: Kernel, config: dict[str, str]) -> str:
    """The vermagic the kernel's loader compares with: read from one of its own modules (exact,
    whatever the kernel's options); from its config where it has no modules at all."""
    tree = kernel.modules_dir / "kernel"
    for sub in ("fs", "lib", "drivers", ""):
        base = tree / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.name.endswith(SUFFIXES):
                return read_module(path).vermagic
    words = [kernel.release]
    if config.get("CONFIG_SMP") == "y":
        words.append("SMP")
    if config.get("CONFIG_PREEMPT_RT") == "y":
        words.append("preempt_rt")
    elif config.get("CONFIG_PREEMPT_BUILD") == "y" or config.get("CONFIG_PREEMPT") == "y":
        words.append("preempt")
    if config.get("CONFIG_MODULE_UNLOAD") == "y":
        words.append("mod_unload")
    if config.get("CONFIG_MODVERSIONS") == "y":
        words.append("modversions")
    if kernel.architecture == "arm64":
        words.append("aarch64")
    return " ".join(words) + " "


def index_path(package: str, version: str) -> Path:
    name = f"{package}_{version.replace(':', '%3a')}.v{_INDEX_VERSION}.pickle"
    return paths.cache_dir() / "modules-index" / name


def build_index(kernel: Kernel, headers_tree: Path) -> KernelIndex:
    symvers = headers_tree / "Module.symvers"
    try:
        exports = parse_symvers(symvers.read_text(errors="replace"))
        config = parse_config((headers_tree / ".config").read_text(errors="replace"))
    except OSError as e:
        raise BuildFailed(f"{headers_tree}: {e}") from None
    return KernelIndex(
        release=kernel.release,
        vermagic=kernel_vermagic(kernel, config),
        modversions=config.get("CONFIG_MODVERSIONS") == "y",
        btf_modules=config.get("CONFIG_DEBUG_INFO_BTF_MODULES") == "y",
        module_sig_force=config.get("CONFIG_MODULE_SIG_FORCE") == "y",
        symbols=exports,
    )


def cached_index(package: str, version: str) -> KernelIndex | None:
    """The index of a kernel package already in the cache, without unpacking anything (an
    AKI's record names its package and version): what makes a warm check milliseconds."""
    path = index_path(package, version)
    return _load(path, path.stat().st_mtime) if path.exists() else None


@lru_cache(maxsize=32)
def _load(path: Path, mtime: float) -> KernelIndex:
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - amilab's own cache file


def kernel_index(
    kernel: Kernel, log: Path | None = None, headers_tree: Path | None = None
) -> KernelIndex:
    """The index of `kernel`: from the cache, else built from its headers (downloaded and
    unpacked once; an own kernel's build tree, `headers_tree`, as given) and cached."""
    if headers_tree is not None:  # stored by its Module.symvers' digest: that names it
        path = index_path(f"own-{headers_tree.name}", kernel.digest[:16])
    else:
        path = index_path(kernel.package, kernel.version)
    if path.exists():
        return _load(path, path.stat().st_mtime)
    from builder.modules.headers import unpacked_headers

    index = build_index(kernel, headers_tree or unpacked_headers(kernel, log))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return index
