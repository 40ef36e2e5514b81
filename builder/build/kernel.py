"""Kernels (AKIs): `kernels/*.yaml` definitions resolved to an exact Debian kernel package.

A definition names a package (usually a metapackage such as linux-image-cloud-amd64). Resolving
it asks a private apt configuration under the cache — never the host's apt state — which exact
versioned package the metapackage points at, downloads that .deb once and unpacks it once. A
rebuild with everything cached touches the network only when the index is over a day old, and
falls back to the cached index when the mirror cannot be reached.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder import ids, paths
from builder.build.mirror import host_mirror
from builder.build.schema import ListOf, Located, Str, _Ctx, build, key, load_nodes
from builder.errors import BadInput, BuildFailed, EnvironmentProblem, RecipeError

NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
PACKAGE = r"[a-z0-9][a-z0-9+.-]+"
MODULE = r"[A-Za-z0-9_-]{1,64}"
INDEX_MAX_AGE = 24 * 3600  # seconds; a fresher index is reused without asking the mirror
_EXACT_IMAGE = re.compile(r"linux-image-\d[^\s]*")


@dataclass(frozen=True)
class KernelDefinition:
    """One `kernels/*.yaml` file; every key is declared once (as recipes do)."""

    name: str = key(Str(NAME, "lowercase letters, digits, . _ -"), "kernel name", required=True)
    package: str = key(
        Str(PACKAGE, "a Debian binary package name"),
        "Debian kernel package or metapackage, resolved to an exact version at build time",
        required=True,
    )
    description: str = key(Str(max_len=255), "free text shown by `amilab kernels`", "")
    ramdisk_modules: tuple[str, ...] = key(
        ListOf(Str(MODULE, "a kernel module name")),
        "driver modules the generated ramdisk carries (built-ins are skipped)",
        (),
    )
    cmdline: str = key(Str(max_len=1024), "default kernel command line", "console=ttyS0")


@dataclass(frozen=True)
class LoadedDefinition:
    definition: KernelDefinition
    where: Located


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
    deb: Path | None = None

    @property
    def aki_id(self) -> str:
        return ids.make_id("aki", self.digest)


# ---------------------------------------------------------------------------------------------
# catalogue


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


def kernel_by_ref(ref: str, release: str = "bookworm", log: Path | None = None) -> Kernel:
    """A kernel named in the catalogue, resolved. `aki-` IDs live in the registry: the pipeline
    looks the record up and calls `cached_kernel` with its package and version."""
    if ids.is_id(ref, "aki"):
        raise BadInput(f"kernel {ref}: an aki- ID is looked up in the registry, not the catalogue")
    return resolve_kernel(definition(ref), release, log)


# ---------------------------------------------------------------------------------------------
# private apt


@dataclass(frozen=True)
class PrivateApt:
    """An apt configuration of its own under the cache: sources, lists, archives, status."""

    base: Path
    release: str

    @property
    def lists(self) -> Path:
        return self.base / "state/lists"

    def prepare(self) -> None:
        for d in ("state/lists/partial", "cache/archives/partial", "etc/empty.d"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        sources = "\n".join(host_mirror().apt_lines(self.release)) + "\n"
        src = self.base / "etc/sources.list"
        if not src.exists() or src.read_text() != sources:
            src.write_text(sources)
            self.mark_stale()  # a changed mirror makes the old index meaningless
        status = self.base / "state/status"
        if not status.exists():
            status.write_text("")  # no installed packages: the host's dpkg state stays out

    def options(self) -> list[str]:
        b = self.base
        opts = {
            "Dir::State": b / "state",
            "Dir::State::Lists": b / "state/lists",
            "Dir::State::status": b / "state/status",
            "Dir::Cache": b / "cache",
            "Dir::Cache::Archives": b / "cache/archives",
            "Dir::Etc::SourceList": b / "etc/sources.list",
            "Dir::Etc::SourceParts": b / "etc/empty.d",
            "Dir::Etc::Preferences": b / "etc/preferences",
            "Dir::Etc::PreferencesParts": b / "etc/empty.d",
            # the host's apt.conf.d is kept (proxies, validity checks) but may disable the
            # binary caches; without them every apt-cache call re-parses the whole index
            "Dir::Cache::pkgcache": "pkgcache.bin",
            "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            # the cache sits under root's home, which the _apt sandbox user cannot enter
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::Retries": "2",
        }
        out = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def index_age(self) -> float | None:
        stamp = self.base / "state/updated"
        if not stamp.exists() or not any(self.lists.glob("*_Packages*")):
            return None
        return time.time() - stamp.stat().st_mtime

    def mark_stale(self) -> None:
        (self.base / "state/updated").unlink(missing_ok=True)

    def update(self, log: Path | None) -> None:
        _run(["apt-get", *self.options(), "-q", "update"], log, what="apt-get update")
        if not any(self.lists.glob("*_Packages*")):
            raise EnvironmentProblem(f"apt-get update fetched no package index for {self.release}")
        (self.base / "state/updated").touch()

    def show(self, package: str) -> dict[str, str] | None:
        """The candidate version's control fields, or None when the index lacks the package."""
        argv = ["apt-cache", *self.options(), "show", "--no-all-versions", package]
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0 or not res.stdout.strip():
            return None
        return parse_control(res.stdout)

    def download(self, package: str, version: str, dest: Path, log: Path | None) -> Path:
        argv = ["apt-get", *self.options(), "-q", "download", f"{package}={version}"]
        _run(argv, log, what=f"apt-get download {package}={version}", cwd=dest)
        found = sorted(dest.glob(f"{package}_*.deb"))
        want = [p for p in found if _deb_version(p) == version]
        if not want:
            raise BuildFailed(f"apt-get download {package}={version} produced no .deb in {dest}")
        return want[0]


def parse_control(text: str) -> dict[str, str]:
    """The first stanza of deb822 control text; continuation lines are joined."""
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and last:
            fields[last] += "\n" + line.strip()
            continue
        k, _, v = line.partition(":")
        last = k.strip()
        fields[last] = v.strip()
    return fields


def exact_dependency(fields: dict[str, str]) -> str | None:
    """The exact linux-image-<version>-<flavour> package a metapackage depends on."""
    for alternative in re.split(r"[,|]", fields.get("Depends", "")):
        name = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
        if _EXACT_IMAGE.fullmatch(name):
            return name
    return None


def _deb_version(path: Path) -> str:
    # apt-get download names files package_version_arch.deb with ':' encoded as %3a
    parts = path.name[: -len(".deb")].split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else ""


def _run(argv: list[str], log: Path | None, what: str, cwd: Path | None = None) -> None:
    if not shutil.which(argv[0]):
        raise EnvironmentProblem(f"{argv[0]} is missing (install apt / dpkg)")
    res = subprocess.run(
        argv, capture_output=True, text=True, check=False, cwd=cwd, stdin=subprocess.DEVNULL
    )
    if log:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        problem = EnvironmentProblem if "update" in what or "download" in what else BuildFailed
        raise problem(f"{what} failed: {tail[0]}")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise concurrent builds on the same cache (one apt/unpack at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# resolution


def resolve_kernel(
    defn: KernelDefinition, release: str = "bookworm", log: Path | None = None
) -> Kernel:
    """Resolve, download (once) and unpack (once) the kernel a definition names."""
    apt = PrivateApt(paths.cache_dir() / "apt" / release, release)
    with _locked(apt.base / "lock"):
        apt.prepare()
        package, version = _resolve_exact(apt, defn.package, log)
        unpacked = kernel_dir(package, version)
        deb = _cached_deb(package, version)
        if not _complete(unpacked):
            deb = deb or _download(apt, package, version, log)
            unpack(deb, unpacked, log)
    return _kernel_from(unpacked, defn, package, version, deb)


def cached_kernel(defn: KernelDefinition, package: str, version: str) -> Kernel:
    """A kernel already unpacked in the cache (e.g. the one an AKI record names), offline."""
    unpacked = kernel_dir(package, version)
    if not _complete(unpacked):
        raise BuildFailed(f"kernel {package}={version} is not in the cache ({unpacked})")
    return _kernel_from(unpacked, defn, package, version, _cached_deb(package, version))


def _resolve_exact(apt: PrivateApt, meta: str, log: Path | None) -> tuple[str, str]:
    """(exact package, version); refreshes the index when it is missing, old, or lacks them."""
    age = apt.index_age()
    refreshed = False
    if age is None or age > INDEX_MAX_AGE:
        refreshed = _try_update(apt, log, must=age is None)
    found = _lookup(apt, meta)
    if found is None and not refreshed:
        _try_update(apt, log, must=True)
        found = _lookup(apt, meta)
    if found is None:
        raise BadInput(f"kernel package {meta!r} is not in the {apt.release} archive")
    return found


def _try_update(apt: PrivateApt, log: Path | None, must: bool) -> bool:
    """Refresh the index; a stale but present index is still usable when offline."""
    try:
        apt.update(log)
        return True
    except EnvironmentProblem:
        if must:
            raise
        if log:
            with open(log, "a") as f:
                f.write("amilab: mirror unreachable; using the cached package index\n")
        return False


def _lookup(apt: PrivateApt, package: str) -> tuple[str, str] | None:
    fields = apt.show(package)
    if fields is None:
        return None
    if _EXACT_IMAGE.fullmatch(package):
        return package, fields["Version"]
    exact = exact_dependency(fields)
    if exact is None:
        raise BadInput(f"kernel package {package!r} depends on no linux-image-<version> package")
    target = apt.show(exact)
    return (exact, target["Version"]) if target else None


def kernel_dir(package: str, version: str) -> Path:
    return paths.cache_dir() / "kernels" / f"{package}_{version.replace(':', '%3a')}"


def debs_dir() -> Path:
    return paths.cache_dir() / "debs"


def _cached_deb(package: str, version: str) -> Path | None:
    for p in sorted(debs_dir().glob(f"{package}_*.deb")):
        if _deb_version(p) == version:
            return p
    return None


def _download(apt: PrivateApt, package: str, version: str, log: Path | None) -> Path:
    debs_dir().mkdir(parents=True, exist_ok=True)
    # download beside the cache, then rename: an interrupted download never looks cached
    with tempfile.TemporaryDirectory(dir=debs_dir(), prefix=".dl-") as tmp:
        got = apt.download(package, version, Path(tmp), log)
        final = debs_dir() / got.name
        os.replace(got, final)
    return final


def _complete(unpacked: Path) -> bool:
    return (unpacked / ".amilab-complete").exists()


def unpack(deb: Path, dest: Path, log: Path | None = None) -> None:
    """dpkg-deb -x into a temporary sibling, run depmod, then rename into place atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], log, what=f"dpkg-deb -x {deb.name}")
        release = release_of(tmp)
        if modules_root(tmp) != tmp / "lib/modules":
            (tmp / "lib").symlink_to("usr/lib")  # depmod -b looks in <base>/lib/modules
        # the .deb carries no modules.dep (its postinst runs depmod); make it here once
        _run(["depmod", "-b", str(tmp), release], log, what=f"depmod {release}")
        (tmp / ".amilab-complete").write_text(f"{deb.name}\n")
        if dest.exists():
            shutil.rmtree(dest)  # an incomplete leftover from an older layout
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def modules_root(unpacked: Path) -> Path:
    """lib/modules (bookworm) or usr/lib/modules (merged-/usr packages, trixie on)."""
    for rel in ("lib/modules", "usr/lib/modules"):
        if (unpacked / rel).is_dir() and not (unpacked / rel).is_symlink():
            return unpacked / rel
    return unpacked / "lib/modules"


def release_of(unpacked: Path) -> str:
    """The one release string under the unpacked package's modules directory."""
    root = modules_root(unpacked)
    releases = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if len(releases) != 1:
        raise BuildFailed(f"{unpacked.name}: expected one modules tree, found {releases or 'none'}")
    return releases[0]


def _kernel_from(
    unpacked: Path, defn: KernelDefinition, package: str, version: str, deb: Path | None
) -> Kernel:
    release = release_of(unpacked)
    vmlinuz = unpacked / "boot" / f"vmlinuz-{release}"
    config = unpacked / "boot" / f"config-{release}"
    for needed in (vmlinuz, config):
        if not needed.exists():
            raise BuildFailed(f"{package}={version}: {needed.name} missing from the package")
    return Kernel(
        name=defn.name,
        package=package,
        version=version,
        release=release,
        vmlinuz=vmlinuz,
        modules_dir=modules_root(unpacked) / release,
        config=config,
        digest=ids.file_sha256(vmlinuz),
        ramdisk_modules=defn.ramdisk_modules,
        cmdline=defn.cmdline,
        deb=deb,
    )
