"""A recipe's out-of-tree modules (`dkms:`, `extra-modules:`): checked before anything is
built, then compiled inside the image for the image's kernel, as `dkms autoinstall` does on a
Debian system that installs a kernel's headers.

- The DKMS packages come from the image's suite and are installed with the base tree
  (mmdebstrap; their postinst runs `dkms add`); the compiler and the rest of what the
  kernel's headers depend on come from the image's suite too, so the build uses the image's
  own compiler, as it would on the instance.
- `linux-headers-<release>` and the packages of the `linux` source it needs (the `-common`
  tree, `linux-kbuild-*`, `linux-compiler-gcc-N-*`) come from the kernel's own suite
  (modules.headers) and are installed with dpkg for the build, then purged: ~60 MB an
  instance never uses (it boots an AKI; another kernel's modules are rebuilt against that
  kernel's headers), and keeping them would make the image depend on one kernel's headers.
- A source tree is built with Kbuild (`make -C /lib/modules/<release>/build M=…`), a prebuilt
  .ko copied; both go to /lib/modules/<release>/extra, where depmod ranks them above the
  kernel's own (as DKMS's updates/dkms).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.build import chroot
from builder.build.apt_index import prepared, refresh_when_old, try_update
from builder.build.kernel_tree import Kernel
from builder.build.recipe import MODULE, LoadedRecipe
from builder.errors import BadInput, BuildFailed
from builder.ids import file_sha256
from builder.modules import headers as headers_mod
from builder.modules.elf import ModuleFacts, is_module_file, module_stem, read_module

if TYPE_CHECKING:
    from builder.build.pipeline import BuildState

RECORD_KEY = "out_of_tree_modules"  # in an AMI record's extra
HEADERS_IN_ROOT = "var/cache/amilab-headers"
SOURCES_IN_ROOT = "usr/src/amilab-extra"  # extra-modules' source trees, kept
BUILD_IN_ROOT = "var/tmp/amilab-module-build"  # where they are built, removed after
BUILD_TOOLS = ("dkms", "make")
ERROR_LINES = 12  # of the compiler's output, in a failed build's message


@dataclass(frozen=True)
class BuiltModule:
    """One module the build put into the image (what describe-images lists)."""

    name: str
    version: str
    release: str  # the kernel release it was built for (its vermagic)
    source: str  # dkms, source or prebuilt
    origin: str  # the DKMS package (=version) or the recipe's path
    path: str  # in the image
    copy: Path  # a copy outside the tree, stored as an artifact at registration
    digest: str
    tree: str = ""  # a source module's tree in the image (what add-modules rebuilds)

    def record(self, artifact: Path) -> dict[str, Any]:
        return {
            **({"SourceTree": self.tree} if self.tree else {}),
            "Name": self.name,
            "Version": self.version,
            "KernelRelease": self.release,
            "Source": self.source,
            "Origin": self.origin,
            "Path": self.path,
            "Digest": self.digest,
            "Artifact": str(artifact),
        }


# --- before the build: the recipe's inputs -------------------------------------------


def extra_path(loaded: LoadedRecipe, i: int, given: str) -> Path:
    """The recipe's `extra-modules[i]`: an absolute path, or one relative to the recipe's
    folder that stays inside it."""
    where = loaded.where
    key = f"extra-modules[{i}]"
    base = Path(where.path).resolve().parent
    path = Path(given)
    if not path.is_absolute():
        path = (base / path).resolve()
        if not path.is_relative_to(base):
            raise where.error(key, f"{given!r} escapes the recipe's folder {base}")
    if not path.exists():
        raise where.error(key, f"{given}: no such file or directory")
    return path


def check_source_tree(loaded: LoadedRecipe, i: int, tree: Path) -> None:
    key = f"extra-modules[{i}]"
    if not ((tree / "Makefile").is_file() or (tree / "Kbuild").is_file()):
        raise loaded.where.error(key, f"{tree}: a module source tree needs a Makefile or Kbuild")
    real = tree.resolve()
    for directory, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = Path(directory, name)
            if p.is_symlink() and not p.resolve().is_relative_to(real):
                raise loaded.where.error(
                    key, f"{p}: a link out of the source tree (to {os.readlink(p)})"
                )


def check_module_name(name: str, shown: str) -> None:
    """The name decides where the .ko goes (extra/<name>.ko) and what modprobe loads."""
    if not re.fullmatch(MODULE, name):
        raise BadInput(f"{shown}: module name {name!r} is not a kernel module name "
                       "(letters, digits, _ and -): it would escape /lib/modules")  # fmt: skip


def check_prebuilt(loaded: LoadedRecipe, i: int, path: Path) -> ModuleFacts:
    key = f"extra-modules[{i}]"
    if not is_module_file(path):
        raise loaded.where.error(key, f"{path}: expected a .ko file or a source tree")
    try:
        facts = read_module(path)
        check_module_name(facts.name or module_stem(path), str(path))
    except BadInput as e:
        raise loaded.where.error(key, str(e)) from None
    arch = loaded.recipe.architecture
    if facts.architecture != arch:
        raise loaded.where.error(
            key, f"{path}: an {facts.architecture} module, and this image is {arch}"
        )
    return facts


def check_dkms(loaded: LoadedRecipe) -> None:
    """Each DKMS package must be in the image's suite and depend on dkms."""
    r = loaded.recipe
    with prepared(r.release, r.architecture) as apt:
        # a cold cache has no index yet, an old one may predate the package: as kernels do
        refreshed = refresh_when_old(apt, None)
        for i, package in enumerate(r.dkms):
            fields = apt.show(package)
            if fields is None and not refreshed:
                refreshed = try_update(apt, None, must=True)
                fields = apt.show(package)
            if fields is None:
                raise loaded.where.error(
                    f"dkms[{i}]", f"{package} is not in the {r.release} archive"
                )
            depends = re.findall(r"(?:^|[,|]\s*)([a-z0-9][a-z0-9+.-]*)", fields.get("Depends", ""))
            if "dkms" not in depends:
                raise loaded.where.error(f"dkms[{i}]", f"{package} is not a DKMS package")


def validate(loaded: LoadedRecipe) -> None:
    """Every out-of-tree input of the recipe, before anything is built or cached."""
    r = loaded.recipe
    for i, given in enumerate(r.extra_modules):
        path = extra_path(loaded, i, given)
        if path.is_dir():
            check_source_tree(loaded, i, path)
        else:
            check_prebuilt(loaded, i, path)
    if r.dkms:
        check_dkms(loaded)


def inputs_digest(loaded: LoadedRecipe) -> str:
    """The content of every extra-modules path (a changed .ko or source makes a new image)."""
    import hashlib

    h = hashlib.sha256()
    for i, given in enumerate(loaded.recipe.extra_modules):
        path = extra_path(loaded, i, given)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            rel = f.name if f == path else str(f.relative_to(path))
            h.update(f"{i}\0{rel}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


# --- the build ------------------------------------------------------------------------


def needs_headers(loaded: LoadedRecipe) -> bool:
    r = loaded.recipe
    sources = [g for i, g in enumerate(r.extra_modules) if extra_path(loaded, i, g).is_dir()]
    return bool(r.dkms or sources)


def packages_for(s: BuildState) -> list[str]:
    """What the base tree needs for the build: the DKMS packages, the build tools and what the
    kernel's headers depend on from the image's suite. Resolves (and downloads) the headers."""
    r = s.recipe
    if not needs_headers(s.loaded):
        return []
    s.headers = headers_mod.resolve(s.kernel, s.logs / "headers.log")
    wanted = [*BUILD_TOOLS, *r.dkms, *s.headers.needs]
    with prepared(r.release, r.architecture) as apt:
        missing = [n for n in s.headers.needs if apt.show(n) is None]
    if missing:
        raise BadInput(
            f"{s.headers.package} ({s.kernel.suite}) needs {', '.join(missing)}, which "
            f"{r.release} lacks: the image's compiler cannot build modules for "
            f"{s.kernel.release}; use a kernel of the image's release"
        )
    return wanted


def in_root(root: Path, log: Path, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """argv in the tree's chroot, the command and its output appended to `log`."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
    return chroot.run(root, argv, log=log)


def _chroot(s: BuildState, argv: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
    return in_root(s.root, s.logs / "out-of-tree.log", argv)


def build_failure(name: str, release: str, build_log: Path | None, log: Path) -> BuildFailed:
    """module-build-failed, with the compiler's error lines (from the module's own build log
    where there is one, else the out-of-tree log)."""
    source = build_log if build_log and build_log.exists() else log
    lines = source.read_text(errors="replace").splitlines() if source.exists() else []
    errors = [ln for ln in lines if re.search(r"\berror\b|Error \d", ln)] or lines[-ERROR_LINES:]
    return BuildFailed(
        f"module-build-failed: {name} for {release} (log: {source})\n"
        + "\n".join(errors[:ERROR_LINES])
    )


def _failed(s: BuildState, name: str, build_log: Path | None) -> BuildFailed:
    return build_failure(name, s.kernel.release, build_log, s.logs / "out-of-tree.log")


def install_headers(
    root: Path, headers: headers_mod.HeaderPackages, log: Path, unpack_only: bool = False
) -> bool:
    """The kernel's header packages into the tree with dpkg (staged inside it first);
    `unpack_only` for a throw-away tree: the files unpacked, dependencies a compile does not
    use ignored, no maintainer scripts (their hooks only start the DKMS builds, which the
    caller runs itself)."""
    staged = root / HEADERS_IN_ROOT
    staged.mkdir(parents=True, exist_ok=True)
    for deb in headers.debs:
        shutil.copy2(deb, staged / deb.name)
    how = ["--force-depends", "--unpack"] if unpack_only else ["-i"]
    argv = ["dpkg", *how, *(f"/{HEADERS_IN_ROOT}/{d.name}" for d in headers.debs)]
    return in_root(root, log, argv).returncode == 0


def dkms_modules(root: Path, package: str) -> list[tuple[str, str]]:
    """(module, version) of each dkms.conf a DKMS package installed under /usr/src."""
    listed = root / "var/lib/dpkg/info" / f"{package}.list"
    out = []
    for line in listed.read_text().splitlines() if listed.exists() else []:
        m = re.fullmatch(r"/usr/src/([^/]+)/dkms\.conf", line)
        if not m:
            continue
        text = (root / line.lstrip("/")).read_text(errors="replace")
        name = re.search(r'^PACKAGE_NAME="?([^"\n]+)"?', text, re.M)
        version = re.search(r'^PACKAGE_VERSION="?([^"\n]+)"?', text, re.M)
        dir_name, _, dir_version = m.group(1).rpartition("-")
        out.append((name.group(1) if name else dir_name,
                    version.group(1) if version else dir_version))  # fmt: skip
    if not out:
        raise BuildFailed(f"{package} installed no /usr/src/<module>-<version>/dkms.conf")
    return out


def _keep_copy(s: BuildState, path: Path, facts: ModuleFacts) -> tuple[Path, str]:
    out = s.workdir / "out-of-tree"
    out.mkdir(exist_ok=True)
    copy = out / path.name
    shutil.copy2(path, copy)
    return copy, file_sha256(copy)


def package_version(root: Path, package: str) -> str:
    res = subprocess.run(
        ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f", "${Version}", package],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return res.stdout.strip()


def build_dkms(s: BuildState, kernel: Kernel) -> list[BuiltModule]:
    release, arch = kernel.release, s.root / "lib/modules"
    built = []
    for package in s.recipe.dkms:
        for name, version in dkms_modules(s.root, package):
            state = s.root / "var/lib/dkms" / name / version / release
            if not state.exists():  # the headers' postinst hook did not build it already
                res = _chroot(s, ["dkms", "install", "-m", name, "-v", version, "-k", release],
                              f"dkms {name}")  # fmt: skip
                if res.returncode != 0:
                    raise _failed(s, name, s.root / "var/lib/dkms" / name / version /
                                  "build/make.log")  # fmt: skip
            for ko in sorted((arch / release / "updates").rglob("*")):
                if not is_module_file(ko):
                    continue
                if not _from_dkms(s.root, name, version, release, module_stem(ko)):
                    continue
                facts = read_module(ko)
                copy, digest = _keep_copy(s, ko, facts)
                built.append(BuiltModule(
                    facts.name or module_stem(ko), facts.version or version, facts.release,
                    "dkms", f"{package}={package_version(s.root, package)}",
                    "/" + str(ko.relative_to(s.root)), copy, digest,
                ))  # fmt: skip
    if not any(m.source == "dkms" for m in built) and s.recipe.dkms:
        raise _failed(s, ", ".join(s.recipe.dkms), None)
    return built


def _from_dkms(root: Path, name: str, version: str, release: str, stem: str) -> bool:
    """The .ko is one that dkms built for (name, version) — listed in its state tree."""
    state = root / "var/lib/dkms" / name / version / release
    return any(module_stem(p) == stem for p in state.rglob("*") if is_module_file(p))


def build_extra(s: BuildState, kernel: Kernel) -> list[BuiltModule]:
    release = kernel.release
    extra = s.root / "lib/modules" / release / "extra"
    built = []
    for i, given in enumerate(s.recipe.extra_modules):
        path = extra_path(s.loaded, i, given)
        tree = ""
        if path.is_dir():
            # the source stays in the image (as DKMS keeps /usr/src/<module>-<version>), so
            # add-modules can build it again for another kernel
            tree = f"/{SOURCES_IN_ROOT}/{i}-{path.name}"
            shutil.copytree(path, s.root / tree.lstrip("/"), symlinks=True)
            found = make_source(s.root, tree, release, s.logs / "out-of-tree.log", given)
            source = "source"
        else:
            found, source = [path], "prebuilt"
        for ko in found:
            facts = read_module(ko)
            name = facts.name or module_stem(ko)
            check_module_name(name, str(ko))
            extra.mkdir(parents=True, exist_ok=True)
            dest = extra / f"{name}.ko"
            shutil.copy2(ko, dest)
            copy, digest = _keep_copy(s, dest, facts)
            inside_path = "/" + str(dest.relative_to(s.root))
            built.append(BuiltModule(name, facts.version, facts.release, source, given,
                                     inside_path, copy, digest, tree))  # fmt: skip
        shutil.rmtree(s.root / BUILD_IN_ROOT, ignore_errors=True)
    return built


def make_source(root: Path, tree: str, release: str, log: Path, shown: str) -> list[Path]:
    """Kbuild on a copy of the source tree at `tree` (in the image) for `release`: the .ko
    files it made (the source itself stays clean). module-build-failed if make fails."""
    build_dir = root / BUILD_IN_ROOT / Path(tree).name
    shutil.rmtree(build_dir, ignore_errors=True)
    shutil.copytree(root / tree.lstrip("/"), build_dir, symlinks=True)
    inside = "/" + str(build_dir.relative_to(root))
    res = in_root(root, log, ["make", "-C", f"/lib/modules/{release}/build", f"M={inside}",
                              "modules"])  # fmt: skip
    if res.returncode != 0:
        raise build_failure(shown, release, None, log)
    found = sorted(build_dir.rglob("*.ko"))
    if not found:
        raise BuildFailed(f"module-build-failed: {shown}: the build made no .ko")
    return found


def build(s: BuildState) -> list[BuiltModule]:
    """Build and install every out-of-tree module of the recipe into the tree at s.root."""
    kernel = s.kernel
    headers = s.headers
    installed: tuple[str, ...] = ()
    built: list[BuiltModule] = []
    with chroot.prepared(s.root):
        try:
            if headers is not None:
                s.stages.detail(f"{headers.package} from {kernel.suite}")
                # unpacked: the postinst only starts DKMS (run below), and a backport's
                # needs a newer linux-base (linux-run-hooks) than its suite's base tree has
                if not install_headers(s.root, headers, s.logs / "out-of-tree.log", True):
                    raise _failed(s, headers.package, None)
                installed = headers.names
            if s.recipe.dkms:
                s.stages.detail("dkms install " + " ".join(s.recipe.dkms))
                built += build_dkms(s, kernel)
            if s.recipe.extra_modules:
                s.stages.detail("extra-modules")
                built += build_extra(s, kernel)
        finally:
            if installed:
                _chroot(s, ["dpkg", "--purge", *installed], "purge headers")
            shutil.rmtree(s.root / HEADERS_IN_ROOT, ignore_errors=True)
    subprocess.run(["depmod", "-b", str(s.root), kernel.release], check=True)
    return built
