"""`amilab build --verify`: build a recipe twice (the second time later, in another work
directory) without registering anything, and when the raw disks differ, say where.

The trees each build wrote into its disk are kept until the end and compared file by file
(presence, type, mode, owner, mtime, link target, content); diffoscope, when installed,
then says how each differing file differs. When the trees agree but the disks do not, the
difference is in the filesystem's or the table's own structures: the superblock fields
(dumpe2fs -h) that differ and the number of differing bytes are reported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.build import chroot, inputs
from builder.build.pipeline import chosen_recipes, run_pipeline
from builder.build.recipe import LoadedRecipe
from builder.ids import sparse_sha256
from builder.signals import sigterm_as_interrupt
from builder.state import workarea

DIFFOSCOPE_FILES = 5  # diffoscope runs on at most this many differing files
DIFFOSCOPE_CHARS = 4000  # of its output per file


@dataclass
class Verdict:
    name: str
    digests: tuple[str, str]
    differences: list[dict[str, str]] = field(default_factory=list)

    @property
    def reproducible(self) -> bool:
        return self.digests[0] == self.digests[1]

    def describe(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Reproducible": self.reproducible,
            "DiskDigests": list(self.digests),
            "Differences": self.differences,
        }


def verify_file(path: Path, image: str | None = None, quiet: bool = False) -> list[Verdict]:
    chosen = chosen_recipes(path, image)
    with sigterm_as_interrupt():
        return [verify_recipe(loaded, quiet) for loaded in chosen]


def verify_recipe(loaded: LoadedRecipe, quiet: bool = False) -> Verdict:
    keep = workarea.new_dir(f"verify-{loaded.recipe.name}")
    try:
        found = inputs.of_recipe(loaded)
        digests = []
        for n in (1, 2):
            if n == 2:
                time.sleep(1.0)  # another second on the clock even for a very fast build
            run_pipeline(loaded, found, quiet, keep=keep / str(n))
            digests.append(sparse_sha256(keep / str(n) / "disk.raw"))
        verdict = Verdict(loaded.recipe.name, (digests[0], digests[1]))
        if not verdict.reproducible:
            verdict.differences = explain(keep / "1", keep / "2")
        return verdict
    finally:
        for n in ("1", "2"):
            link = keep / n / "root"
            if link.is_symlink():
                chroot.remove_tree(Path(os.readlink(link)))
        shutil.rmtree(keep, ignore_errors=True)


def explain(a: Path, b: Path) -> list[dict[str, str]]:
    """The differences between two kept builds (each `disk.raw` and `root`)."""
    out = compare_trees(a / "root", b / "root")
    if shutil.which("diffoscope"):
        for entry in [d for d in out if d["What"] == "content"][:DIFFOSCOPE_FILES]:
            rel = entry["Path"].lstrip("/")
            entry["Diffoscope"] = diffoscope(a / "root" / rel, b / "root" / rel)
    if not out:
        out = compare_structures(a / "disk.raw", b / "disk.raw")
    return out


def compare_trees(a: Path, b: Path) -> list[dict[str, str]]:
    left, right = _listing(a.resolve()), _listing(b.resolve())
    out: list[dict[str, str]] = []
    for rel in sorted(set(left) | set(right)):
        if rel not in right:
            out.append({"Path": rel, "What": "only in the first build"})
        elif rel not in left:
            out.append({"Path": rel, "What": "only in the second build"})
        else:
            for what, (x, y) in _fields(left[rel], right[rel]).items():
                if x != y:
                    out.append({"Path": rel, "What": what, "First": x, "Second": y})
    return out


def _listing(root: Path) -> dict[str, tuple[os.stat_result, str]]:
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            else:
                content = ""
            found["/" + os.path.relpath(path, root)] = (st, content)
    return found


def _fields(x: tuple[os.stat_result, str], y: tuple[os.stat_result, str]) -> dict[str, Any]:
    (sx, cx), (sy, cy) = x, y
    return {
        "type and mode": (oct(sx.st_mode), oct(sy.st_mode)),
        "owner": (f"{sx.st_uid}:{sx.st_gid}", f"{sy.st_uid}:{sy.st_gid}"),
        "mtime": (str(int(sx.st_mtime)), str(int(sy.st_mtime))),
        "content": (cx, cy),
    }


def diffoscope(a: Path, b: Path) -> str:
    result = subprocess.run(
        ["diffoscope", "--text", "-", "--no-progress", str(a), str(b)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    return (result.stdout or result.stderr)[:DIFFOSCOPE_CHARS]


def compare_structures(a: Path, b: Path) -> list[dict[str, str]]:
    """Same files, different disks: which superblock fields, and how many bytes."""
    out = []
    heads = [_superblock(p) for p in (a, b)]
    for key in sorted(set(heads[0]) | set(heads[1])):
        x, y = heads[0].get(key, ""), heads[1].get(key, "")
        if x != y:
            out.append({"Path": "(ext4 superblock)", "What": key, "First": x, "Second": y})
    cmp = subprocess.run(["cmp", "-l", str(a), str(b)], capture_output=True, text=True)
    lines = cmp.stdout.splitlines()
    if lines:
        first = int(lines[0].split()[0]) - 1
        out.append(
            {
                "Path": "(disk)",
                "What": f"{len(lines)} bytes differ outside the files, the first at offset {first}",
            }
        )
    return out


def _superblock(disk: Path) -> dict[str, str]:
    result = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True)
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields
