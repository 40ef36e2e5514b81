"""An unpacked kernel: the tree its packages make in the cache, and the Kernel read from it.

Releases package their kernels differently: bullseye's and bookworm's linux-image-<release>
is one .deb with /boot/vmlinuz-<release> and uncompressed modules under /lib/modules; from
sid (and trixie's backports) on it is split into linux-binary-<release> (vmlinuz inside
/usr/lib/modules/<release>), linux-modules-<release> (.ko.xz) and linux-base-<release>,
which unpack into one tree. Both shapes are read here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder import ids, paths
from builder.build.apt_index import debs_dir
from builder.build.kernel_catalogue import KernelDefinition
from builder.children import ending_with_us
from builder.errors import BuildFailed, EnvironmentProblem


@dataclass(frozen=True)
class Kernel:
    """A resolved, unpacked kernel: what an AKI is made of."""

    name: str
    package: str  # exact binary package, e.g. linux-image-6.1.0-NN-cloud-amd64
    version: str  # exact Debian version of that package
    release: str  # `uname -r`
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<release>, depmod already run
    config: Path
    digest: str  # sha256 of the vmlinuz bytes
    ramdisk_modules: tuple[str, ...]
    cmdline: str
    deb: Path | None = None  # the linux-image package's own .deb
    # where it was resolved; the same package from another suite is the same kernel
    suite: str = field(default="", compare=False)
    debs: tuple[Path, ...] = ()  # every .deb unpacked into the tree (split packages: several)
    architecture: str = "x86_64"  # EC2's name (arch.py)

    @property
    def aki_id(self) -> str:
        return ids.make_id("aki", self.digest)


def kernel_dir(package: str, version: str) -> Path:
    return paths.cache_dir() / "kernels" / f"{package}_{version.replace(':', '%3a')}"


def complete(unpacked: Path) -> bool:
    return (unpacked / ".amilab-complete").exists()


def run_logged(argv: list[str], log: Path | None, what: str, cwd: Path | None = None) -> None:
    if not shutil.which(argv[0]):
        raise EnvironmentProblem(f"{argv[0]} is missing (install apt / dpkg)")
    res = subprocess.run(
        ending_with_us(argv), capture_output=True, text=True, check=False, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if log:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildFailed(f"{what} failed: {tail[0]}")


def unpack_debs(
    debs: list[Path], dest: Path, log: Path | None = None,
    finish: Callable[[Path], None] = lambda tree: None,
) -> None:
    """dpkg-deb -x every package into a temporary sibling of `dest`, `finish(tree)` there
    (it may refuse), mark it complete and rename it into place: an interrupted or refused
    unpack never looks done. The kernel, header and foreign-architecture caches share it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for deb in debs:
            run_logged(["dpkg-deb", "-x", str(deb), str(tmp)], log, what=f"dpkg-deb -x {deb.name}")
        finish(tmp)
        (tmp / ".amilab-complete").write_text("".join(f"{d.name}\n" for d in debs))
        if dest.exists():
            shutil.rmtree(dest)  # an incomplete leftover from an older layout
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def unpack(debs: Path | list[Path], dest: Path, log: Path | None = None) -> None:
    """A kernel's packages as one tree (a split kernel's packages make one, as installing
    them would), with the modules.dep its postinst would have made."""

    def depmod(tree: Path) -> None:
        release = release_of(tree)
        if modules_root(tree) != tree / "lib/modules":
            (tree / "lib").symlink_to("usr/lib")  # depmod -b looks in <base>/lib/modules
        run_logged(["depmod", "-b", str(tree), release], log, what=f"depmod {release}")

    unpack_debs([debs] if isinstance(debs, Path) else list(debs), dest, log, depmod)


def modules_root(unpacked: Path) -> Path:
    """lib/modules (bookworm) or usr/lib/modules (merged-/usr packages, trixie on)."""
    for rel in ("lib/modules", "usr/lib/modules"):
        top = unpacked / rel.split("/", 1)[0]
        # unpack() links lib -> usr/lib for depmod; name the tree by its real path
        if (unpacked / rel).is_dir() and not top.is_symlink():
            return unpacked / rel
    return unpacked / "lib/modules"


def release_of(unpacked: Path) -> str:
    """The one release string under the unpacked package's modules directory."""
    root = modules_root(unpacked)
    releases = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if len(releases) != 1:
        raise BuildFailed(f"{unpacked.name}: expected one modules tree, found {releases or 'none'}")
    return releases[0]


def first_file(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def kernel_from(
    unpacked: Path, defn: KernelDefinition, package: str, version: str, suite: str
) -> Kernel:
    release = release_of(unpacked)
    modules = modules_root(unpacked) / release
    # /boot/vmlinuz-<release> (one-.deb kernels) or <modules>/vmlinuz (linux-binary-<release>)
    vmlinuz = first_file([unpacked / "boot" / f"vmlinuz-{release}", modules / "vmlinuz"])
    config = first_file([unpacked / "boot" / f"config-{release}", modules / "config"])
    for needed, what in ((vmlinuz, "vmlinuz"), (config, "config")):
        if needed is None:
            raise BuildFailed(f"{package}={version}: no {what} for {release} in the package")
    assert vmlinuz is not None and config is not None
    listed = (unpacked / ".amilab-complete").read_text().split()
    debs = tuple(p for p in (debs_dir() / name for name in listed) if p.exists())
    own = next((d for d in debs if d.name.startswith(f"{package}_")), None)
    return Kernel(
        name=defn.name,
        package=package,
        version=version,
        release=release,
        vmlinuz=vmlinuz,
        modules_dir=modules,
        config=config,
        digest=ids.file_sha256(vmlinuz),
        ramdisk_modules=defn.ramdisk_modules,
        cmdline=defn.cmdline,
        deb=own,
        suite=suite,
        debs=debs,
        architecture=defn.architecture,
    )
