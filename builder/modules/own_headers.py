"""`register-kernel --headers DIR`: an own kernel's build tree, so its out-of-tree modules get
the static verdict (its Module.symvers and .config) and add-modules' rebuild (the tree is
what /lib/modules/<release>/build points at) as catalogue kernels do with their
linux-headers package.

The tree is checked (Module.symvers, .config, a Makefile, its release the kernel's when it
says one, no link out of it) and stored once under amilab's home (kernel-headers/) by the
digest of its Module.symvers: written beside, then renamed, so an interrupted copy never
looks stored.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from builder import paths
from builder.build.own_kernel import OWN_KERNEL_KEY
from builder.errors import BadInput
from builder.ids import file_sha256
from builder.images.records import ImageRecord

HEADERS_KEY = "headers"  # in the AKI record's own_kernel extra
STORE = "kernel-headers"  # under amilab_home(): one folder per Module.symvers digest
DONE = ".amilab-complete"


def check_tree(tree: Path, release: str | None) -> None:
    """BadInput (one line) for a folder that is not a kernel build tree (for `release`, when
    given: the kernel's release is known once its files are read)."""
    if not tree.is_dir():
        raise BadInput(f"--headers {tree}: no such folder")
    for name in ("Module.symvers", ".config", "Makefile"):
        if not (tree / name).is_file():
            raise BadInput(f"--headers {tree}: no {name} (a kernel build tree after `make` "
                           "or `make modules_prepare` has one)")  # fmt: skip
    said = tree / "include/config/kernel.release"
    if release and said.is_file() and (found := said.read_text().strip()) != release:
        raise BadInput(f"--headers {tree}: a build tree of {found}, the kernel is {release}")
    real = tree.resolve()
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = Path(directory, name)
            if p.is_symlink() and not p.resolve().is_relative_to(real):
                raise BadInput(f"--headers {tree}: {p} links out of the tree")


def store_tree(tree: Path, release: str) -> Path:
    """The checked tree, stored once (by its Module.symvers' digest)."""
    check_tree(tree, release)
    digest = file_sha256(tree / "Module.symvers")
    dest = paths.amilab_home() / STORE / digest
    if (dest / DONE).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".stage-"))
    try:
        shutil.copytree(tree, stage / "tree", symlinks=True)
        (stage / "tree" / DONE).write_text("")
        if dest.exists():
            shutil.rmtree(dest)  # an incomplete leftover
        os.rename(stage / "tree", dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest


def headers_of(aki: ImageRecord) -> Path | None:
    """The build tree register-kernel stored for an own kernel, if it was given one."""
    own: dict[str, Any] = aki.extra.get(OWN_KERNEL_KEY) or {}
    found = own.get(HEADERS_KEY)
    if not found:
        return None
    path = Path(str(found))
    if not (path / DONE).exists():
        raise BadInput(f"{aki.image_id}: the build tree register-kernel stored ({path}) is "
                       "gone; register the kernel again with --headers")  # fmt: skip
    return path


def compiler_of(tree: Path) -> str:
    """The gcc package the tree's .config says it was built with (gcc-12), or ""."""
    text = (tree / ".config").read_text(errors="replace")
    m = re.search(r'^CONFIG_CC_VERSION_TEXT="[^"]*\bgcc\b[^"]*?\s(\d+)\.\d+[.\d]*"', text, re.M)
    return f"gcc-{m.group(1)}" if m else ""
