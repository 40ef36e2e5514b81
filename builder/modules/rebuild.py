"""add-modules' rebuild: an image's out-of-tree modules compiled again for another kernel.

As on an instance that installs another kernel's headers and lets DKMS rebuild: inside a copy
of the image's own tree (dumped from its disk with debugfs; the source disk is only read),
with the image's own compiler, `dkms` and `make`, and the kernel's header packages from the
kernel's own suite (builder.modules.headers). DKMS modules are built from the sources the
image keeps in /usr/src, `extra-modules` source trees from /usr/src/amilab-extra; a prebuilt
.ko cannot be rebuilt and is reported so. The .ko files come out into a staged copy of the
kernel's modules tree (hard links into the kernel cache) where depmod indexes them with the
kernel's own, ready for add-modules to install.

Headers that want a compiler the image lacks (a sid kernel's gcc on a bookworm image) fail
before anything is built, saying so; a failed compile is `module-build-failed` with the
module's name and the compiler's error lines. Either way nothing is registered.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import paths
from builder.build import chroot
from builder.build.apt_index import cached_deb, download_deb, prepared
from builder.build.kernel_catalogue import DEFAULT_RELEASE
from builder.build.kernel_tree import Kernel
from builder.build.out_of_tree import (
    HEADERS_IN_ROOT,
    BuiltModule,
    build_failure,
    dkms_modules,
    in_root,
    install_headers,
    make_source,
    package_version,
)
from builder.errors import BuildFailed
from builder.ids import file_sha256
from builder.modules import headers as headers_mod
from builder.modules.elf import is_module_file, module_stem, read_module
from builder.modules.own_headers import compiler_of

RECORD_KEY = "out_of_tree_modules"  # builder.build.out_of_tree.RECORD_KEY
COMPILER = re.compile(r"^(gcc|g\+\+|clang|llvm|lld)(-\d+)?(-[a-z0-9_-]+)?$")


@dataclass
class Rebuilt:
    """What the rebuild made for one kernel."""

    release: str
    modules: list[BuiltModule] = field(default_factory=list)
    base: Path | None = None  # holds <release>/ with the rebuilt .ko and depmod's index
    notes: list[str] = field(default_factory=list)


def dump_tree(disk: Path, offset: int, dest: Path) -> None:
    """The image's root filesystem into `dest` (debugfs rdump: the disk is only read)."""
    spec = f"{disk}?offset={offset}" if offset else str(disk)
    dest.mkdir(parents=True)
    r = subprocess.run(["debugfs", "-R", f"rdump / {dest}", spec], capture_output=True,
                       text=True, errors="replace")  # fmt: skip
    problems = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if r.returncode != 0 or not (dest / "var/lib/dpkg/status").is_file():
        raise BuildFailed(f"debugfs rdump of {disk}: {(problems or ['no dpkg status'])[0]}")


def installed_packages(root: Path) -> set[str]:
    """Packages dpkg lists as installed in the tree."""
    text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    out = set()
    for para in text.split("\n\n"):
        name = re.search(r"^Package: (\S+)", para, re.M)
        if name and re.search(r"^Status: install ok installed", para, re.M):
            out.add(name.group(1))
    return out


def check_compiler(root: Path, headers: headers_mod.HeaderPackages, names: str) -> list[str]:
    """The compiler the kernel's headers name (their linux-compiler-gcc-N package depends on
    it) must be the image's: module-build-failed saying so where the image lacks it. The
    other dependencies the image lacks are returned (pahole for modules' BTF, linux-base):
    what the instance's apt would install from its suite with the headers."""
    have = installed_packages(root)
    missing = [n for n in headers.needs if n not in have]
    compilers = [n for n in missing if COMPILER.match(n)]
    if compilers:
        own = sorted(n for n in have if re.fullmatch(r"gcc-\d+", n))
        raise BuildFailed(
            f"module-build-failed: {names} for {headers.release}: compiler mismatch: "
            f"{headers.package} needs {', '.join(compilers)}, which the image lacks (it has "
            f"{', '.join(own) or 'no gcc'})"
        )
    return missing


def _dkms_packages(modules: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for m in modules:
        package = str(m.get("Origin", "")).split("=", 1)[0]
        if m.get("Source") == "dkms" and package and package not in out:
            out.append(package)
    return out


def _kept(ko: Path, work: Path) -> tuple[Path, str]:
    out = work / "rebuilt"
    out.mkdir(exist_ok=True)
    copy = out / ko.name
    shutil.copy2(ko, copy)
    return copy, file_sha256(copy)


def _dkms(root: Path, package: str, release: str, log: Path, work: Path) -> list[BuiltModule]:
    built = []
    for name, version in dkms_modules(root, package):
        state = root / "var/lib/dkms" / name / version / release
        if not state.exists():  # the headers' postinst hook did not build it already
            res = in_root(root, log, ["dkms", "install", "-m", name, "-v", version, "-k", release])
            if res.returncode != 0 or not state.exists():
                make_log = root / "var/lib/dkms" / name / version / "build/make.log"
                if make_log.exists():  # the tree goes: its make.log goes into the kept log
                    with open(log, "a") as f:
                        f.write(make_log.read_text(errors="replace"))
                raise build_failure(name, release, None, log)
        for ko in sorted(state.rglob("*")):
            if not is_module_file(ko):
                continue
            installed = next(
                (p for p in (root / "lib/modules" / release / "updates").rglob(ko.name)), ko
            )
            facts = read_module(installed)
            copy, digest = _kept(installed, work)
            path = f"/lib/modules/{release}/updates/dkms/{installed.name}"
            built.append(BuiltModule(
                facts.name or module_stem(installed), facts.version or version, facts.release,
                "dkms", f"{package}={package_version(root, package)}", path, copy, digest,
            ))  # fmt: skip
    return built


def _source(root: Path, m: dict[str, Any], release: str, log: Path, work: Path) -> BuiltModule:
    tree = str(m["SourceTree"])
    found = [ko for ko in make_source(root, tree, release, log, m["Name"])
             if (read_module(ko).name or module_stem(ko)) == m["Name"]]  # fmt: skip
    if not found:
        raise BuildFailed(f"module-build-failed: {m['Name']} for {release}: no {m['Name']}.ko")
    facts = read_module(found[0])
    copy, digest = _kept(found[0], work)
    path = f"/lib/modules/{release}/extra/{m['Name']}.ko"
    return BuiltModule(m["Name"], facts.version, facts.release, "source", str(m["Origin"]),
                       path, copy, digest, tree)  # fmt: skip


def own_build_tree(root: Path, tree: Path, release: str, names: str) -> None:
    """An own kernel's build tree (register-kernel --headers) where its modules' builds
    look: /usr/src/linux-headers-<release>, linked from /lib/modules/<release>/build; the gcc
    its .config names must be the image's."""
    gcc = compiler_of(tree)
    if gcc and gcc not in installed_packages(root):
        raise BuildFailed(
            f"module-build-failed: {names} for {release}: compiler mismatch: its build tree "
            f"was made with {gcc}, which the image lacks"
        )
    inside = f"usr/src/linux-headers-{release}"
    shutil.copytree(tree, root / inside, symlinks=True)
    build = root / "lib/modules" / release / "build"
    build.parent.mkdir(parents=True, exist_ok=True)
    build.unlink(missing_ok=True)
    build.symlink_to(f"/{inside}")


def support_debs(
    suite: str, architecture: str, lacking: list[str], have: set[str], log: Path
) -> list[Path]:
    """The image's suite's packages for what the headers need and the image lacks, with
    their own dependencies the image lacks (downloaded once into the package cache); a
    name the suite does not have is left out (dpkg then says what is missing)."""
    out, todo, seen = [], list(lacking), set(have)
    with prepared(suite, architecture) as apt:
        while todo:
            name = todo.pop(0)
            if name in seen:
                continue
            seen.add(name)
            fields = apt.show(name)
            if fields is None:
                continue
            version = fields["Version"]
            out.append(cached_deb(name, version) or download_deb(apt, name, version, log))
            todo += [n for n, _ in headers_mod.dependencies(fields)]
    return out


def _headers_in(
    root: Path,
    kernel: Kernel,
    headers: headers_mod.HeaderPackages | Path,
    names: str,
    log: Path,
    done: Rebuilt,
    suite: str,
) -> None:
    """The kernel's headers into the tree: an own kernel's build tree (a Path), else its
    header packages from its suite."""
    if isinstance(headers, Path):
        own_build_tree(root, headers, kernel.release, names)
        return
    lacking = check_compiler(root, headers, names)
    if lacking:
        found = support_debs(suite, kernel.architecture, lacking, installed_packages(root), log)
        staged = root / HEADERS_IN_ROOT
        staged.mkdir(parents=True, exist_ok=True)
        for deb in found:
            shutil.copy2(deb, staged / deb.name)
        argv = ["dpkg", "--force-depends", "-i", *(f"/{HEADERS_IN_ROOT}/{d.name}" for d in found)]
        if found and in_root(root, log, argv).returncode != 0:
            raise build_failure(", ".join(lacking), kernel.release, None, log)
        done.notes.append(f"from {suite} for the build: " + ", ".join(d.name for d in found))
    if not install_headers(root, headers, log, unpack_only=True):
        raise build_failure(headers.package, kernel.release, None, log)


def rebuild(
    modules: list[dict[str, Any]],
    disk: Path,
    offset: int,
    kernel: Kernel,
    work: Path,
    own_tree: Path | None = None,
    suite: str = DEFAULT_RELEASE,
) -> Rebuilt:
    """Build `modules` (an AMI record's out-of-tree list) for `kernel` in a copy of the tree
    on `disk`; the result's base holds the kernel's tree with them, indexed by depmod.
    `own_tree`: an own kernel's build tree (else its suite's header packages); `suite`: the
    image's, where what the headers need besides comes from."""
    # kept after the work directory goes: a failure's message names it
    release, log = (
        kernel.release,
        paths.logs_dir() / f"add-modules-{kernel.release}-{os.getpid()}.log",
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    done = Rebuilt(release)
    work.mkdir(parents=True, exist_ok=True)
    # what a failure names: the modules that would be built (a prebuilt .ko is not)
    names = ", ".join(sorted({str(m["Name"]) for m in modules if m.get("Source") == "dkms"
                              or m.get("SourceTree")}))  # fmt: skip
    if not names:  # prebuilt modules only: nothing to build, the kernel's tree as it is
        done.notes.append(f"prebuilt modules only: none rebuilt for {release}")
        return done
    root = work / "tree"
    # a package the mirror lacks is exit 3 before anything is dumped
    headers = None if own_tree else headers_mod.resolve(kernel, log)
    dump_tree(disk, offset, root)
    with chroot.prepared(root):
        _headers_in(root, kernel, headers or own_tree, names, log, done, suite)
        for package in _dkms_packages(modules):
            done.modules += _dkms(root, package, release, log, work)
        for m in modules:
            if m.get("Source") == "source" and m.get("SourceTree"):
                done.modules.append(_source(root, m, release, log, work))
            elif m.get("Source") != "dkms":
                done.notes.append(f"{m['Name']}: {m.get('Source')} module, not rebuilt for "
                                  f"{release} (no source in the image)")  # fmt: skip
    chroot.remove_tree(root)
    done.base = stage_tree(kernel, work, done.modules)
    done.notes.append(f"rebuilt for {release} in the image's tree: "
                      + ", ".join(f"{m.name} {m.version}" for m in done.modules))  # fmt: skip
    return done


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_tree(kernel: Kernel, work: Path, modules: list[BuiltModule]) -> Path:
    """The kernel's modules tree (hard links into the cache) with `modules` at their paths,
    indexed by depmod (which writes new index files, never into the linked ones)."""
    base = work / "stage/lib/modules"
    tree = base / kernel.release
    shutil.copytree(kernel.modules_dir, tree, symlinks=True, copy_function=_link_or_copy)
    for index in tree.glob("modules.*"):  # links to the cache's: depmod writes its own
        if index.name not in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
            index.unlink()
    for m in modules:
        dest = tree / m.path.split(f"/lib/modules/{kernel.release}/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(m.copy, dest)
    subprocess.run(["depmod", "-b", str(work / "stage"), kernel.release], check=True,
                   capture_output=True)  # fmt: skip
    return base
