"""Kernels (AKIs): `kernels/*.yaml` definitions resolved to an exact Debian kernel package.

A definition names a package (usually a metapackage such as linux-image-cloud-amd64) and the
Debian suite it comes from. Resolving it asks a private apt configuration per suite under the
cache — never the host's apt state — which exact versioned package the metapackage points at,
downloads that .deb once and unpacks it once. A rebuild with everything cached touches the
network only when the index is over a day old, and falls back to the cached index when the
mirror cannot be reached.

Releases package their kernels differently, and resolution follows what the index says rather
than assuming one shape: bullseye's and bookworm's linux-image-<release> is one .deb with
/boot/vmlinuz-<release> and uncompressed modules under /lib/modules; from sid (and trixie's
backports) on it is an empty package depending on linux-binary-<release> (vmlinuz inside
/usr/lib/modules/<release>), linux-modules-<release> (.ko.xz) and linux-base-<release> (config,
System.map, modules.builtin), which are all fetched and unpacked into one tree.
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder import ids, paths
from builder.build.arch import NAMES as ARCHITECTURES
from builder.build.arch import of as arch_of
from builder.build.mirror import host_mirror
from builder.build.schema import Choice, ListOf, Located, Str, _Ctx, build, key, load_nodes
from builder.errors import BadInput, BuildFailed, EnvironmentProblem, RecipeError
from builder.images.records import ImageRecord

NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
PACKAGE = r"[a-z0-9][a-z0-9+.-]+"
MODULE = r"[A-Za-z0-9_-]{1,64}"
INDEX_MAX_AGE = 24 * 3600  # seconds; a fresher index is reused without asking the mirror
_EXACT_IMAGE = re.compile(r"linux-image-\d+\.\d+[^\s]*")  # not 686-pae, a flavour
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
UPDATE_ATTEMPTS = 3  # apt-get update tries before a mirror problem is reported
DOWNLOAD_ATTEMPTS = 2
# an AKI record's extra key naming the files `register-kernel` stored for it
OWN_KERNEL_KEY = "own_kernel"
RETRY_DELAY = 5.0  # seconds before the second try, doubled for each further one
NO_SECURITY = "state/no-security"  # the index was last fetched without its security suite


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


def kernel_by_ref(ref: str, release: str = DEFAULT_RELEASE, log: Path | None = None) -> Kernel:
    """A kernel named in the catalogue, resolved. `aki-` IDs live in the registry: the pipeline
    looks the record up and calls `cached_kernel` with its package and version."""
    if ids.is_id(ref, "aki"):
        raise BadInput(f"kernel {ref}: an aki- ID is looked up in the registry, not the catalogue")
    return resolve_kernel(definition(ref), release, log)


def suite_of(defn: KernelDefinition, release: str = DEFAULT_RELEASE) -> str:
    """The suite a definition resolves in: its own, or the recipe's release."""
    return defn.suite or release


# ---------------------------------------------------------------------------------------------
# private apt


@dataclass(frozen=True)
class PrivateApt:
    """An apt configuration of its own under the cache: sources, lists, archives, status."""

    base: Path
    release: str  # the suite, e.g. bookworm-backports
    deb_arch: str = "amd64"  # Debian's architecture the index is fetched for

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
        if not any(self.lists.glob("*_Packages")) and any(self.lists.glob("*_Packages.*")):
            # kept compressed by an older configuration; apt would keep them so while the
            # mirror's Release is unchanged
            for f in self.lists.glob("*_*"):
                f.unlink()
            self.mark_stale()
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
            "APT::Architecture": self.deb_arch,
            "APT::Architectures": self.deb_arch,
            # the cache sits under root's home, which the _apt sandbox user cannot enter
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Acquire::Retries": "2",
            # sid's and backports' Release files expire within a week, and a mirror that is a
            # snapshot outlives that; the signature is still checked
            "Acquire::Check-Valid-Until": "false",
            # lists kept compressed (a host setting for small Docker layers) make every
            # apt-cache show decompress the whole index: ~1.5 s against ~0.05 s
            "Acquire::GzipIndexes": "false",
        }
        out = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def index_age(self) -> float | None:
        stamp = self.base / "state/updated"
        # compressed lists (fetched before GzipIndexes was turned off) count as none
        if not stamp.exists() or not any(self.lists.glob("*_Packages")):
            return None
        return time.time() - stamp.stat().st_mtime

    def mark_stale(self) -> None:
        (self.base / "state/updated").unlink(missing_ok=True)

    def update(self, log: Path | None, attempts: int = UPDATE_ATTEMPTS) -> None:
        """apt-get update, tried again after a pause: a mirror caught mid-sync serves an index
        whose size or hash disagrees with its Release file until the sync ends. apt commits
        each repository's new files only when all of them arrived, so a failed try leaves the
        previous index (or none) in place."""
        argv = ["apt-get", *self.options(), "-q", "update"]
        reason = _retried(argv, log, attempts)
        if reason is not None and self._without_security(reason, log):
            (self.base / NO_SECURITY).touch()
            reason = None
        elif reason is None:
            (self.base / NO_SECURITY).unlink(missing_ok=True)
        if reason is not None:
            raise EnvironmentProblem(
                f"suite {self.release}: no package index from {host_mirror().debian} after "
                f"{attempts} {'try' if attempts == 1 else 'tries'}: {reason}"
            )
        if not any(self.lists.glob("*_Packages")):
            raise EnvironmentProblem(f"apt-get update fetched no package index for {self.release}")
        (self.base / "state/updated").touch()

    def _without_security(self, reason: str, log: Path | None) -> bool:
        """True when only the security suite's index could not be had and the release's own
        is here: then the index goes on without security updates, said in the log. (This
        machine's mirror has served a bookworm-security i386 Packages.xz of another size than
        its Release names for hours; every i386 lookup failed with it.)"""
        security = host_mirror().security
        main = list(self.lists.glob(f"*_dists_{self.release}_main_binary-{self.deb_arch}_Packages"))
        if not security or security.split("://", 1)[-1] not in reason or not main:
            return False
        if log:
            with open(log, "a") as f:
                f.write(f"amilab: {self.release}-security ({self.deb_arch}) index unavailable, "
                        f"resolving without it: {reason}\n")  # fmt: skip
        return True

    @property
    def without_security(self) -> bool:
        """The last update went on without the security suite (see _without_security): the
        base tree of this release and architecture is made from the same sources."""
        return (self.base / NO_SECURITY).exists()

    def apt_lines(self) -> list[str]:
        lines = host_mirror().apt_lines(self.release)
        if self.without_security:
            lines = [ln for ln in lines if not ln.endswith(f" {self.release}-security main")]
        return lines

    def show(self, package: str) -> dict[str, str] | None:
        """The candidate version's control fields, or None when the index lacks the package."""
        # the candidate from `policy`, then that version's record: `show --no-all-versions`
        # builds apt's whole dependency cache for it (~0.8 s per call against ~0.05 s)
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        argv = ["apt-cache", *self.options(), "policy", package]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        m = re.search(r"^\s*Candidate:\s*(\S+)", res.stdout, re.MULTILINE)
        if res.returncode != 0 or not m or m.group(1) == "(none)":
            return None
        argv = ["apt-cache", *self.options(), "show", f"{package}={m.group(1)}"]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if res.returncode != 0 or not res.stdout.strip():
            return None
        return parse_control(res.stdout)

    def download(self, package: str, version: str, dest: Path, log: Path | None) -> Path:
        argv = ["apt-get", *self.options(), "-q", "download", f"{package}={version}"]
        if not shutil.which("apt-get"):
            raise EnvironmentProblem("apt-get is missing (install apt)")
        reason = _retried(argv, log, DOWNLOAD_ATTEMPTS, cwd=dest)
        if reason is not None:
            # the pool may have moved on since the index was fetched: refresh it next time
            self.mark_stale()
            raise EnvironmentProblem(
                f"suite {self.release}: {package}={version} could not be downloaded from "
                f"{host_mirror().debian} after {DOWNLOAD_ATTEMPTS} tries: {reason}"
            )
        found = sorted(dest.glob(f"{package}_*.deb"))
        want = [p for p in found if _deb_version(p) == version]
        if not want:
            raise BuildFailed(f"apt-get download {package}={version} produced no .deb in {dest}")
        return want[0]


def _retried(
    argv: list[str], log: Path | None, attempts: int, cwd: Path | None = None
) -> str | None:
    """Run an apt command up to `attempts` times; None once it succeeds, else why it failed."""
    if not shutil.which(argv[0]):
        raise EnvironmentProblem(f"{argv[0]} is missing (install apt)")
    reason = "no output"
    for attempt in range(attempts):
        if attempt:
            time.sleep(RETRY_DELAY * 2 ** (attempt - 1))
        res = subprocess.run(
            argv, capture_output=True, text=True, check=False, cwd=cwd, stdin=subprocess.DEVNULL
        )
        if log:
            with open(log, "a") as f:
                f.write(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        if res.returncode == 0:
            return None
        reason = apt_error(res.stdout + res.stderr)
    return reason


def apt_error(output: str) -> str:
    """The line of apt's output that says what went wrong, shortened to one line.

    apt ends a failed update with "Some index files failed to download", which says nothing;
    the line before it names the file and the cause ("File has unexpected size (… != …).
    Mirror sync in progress?", "Hash Sum mismatch", "404 Not Found")."""
    errors = [ln[3:].strip() for ln in output.splitlines() if ln.startswith(("E: ", "W: "))]
    useful = [e for e in errors if not e.startswith("Some index files failed to download")]
    chosen = (useful or errors or [ln for ln in output.splitlines() if ln.strip()][-1:] or [""])[0]
    chosen = re.sub(r"\s*\[IP: [^\]]*\]", "", chosen)  # the mirror's address and port
    chosen = " ".join(chosen.split())
    return chosen or "apt failed without a message"


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


def _relations(fields: dict[str, str], name: str = "Depends") -> list[tuple[str, str | None]]:
    """(package, exact version or None) for every alternative of a relationship field."""
    out = []
    for alternative in re.split(r"[,|]", fields.get(name, "")):
        m = re.match(r"\s*([^\s(:]+)(?::\S+)?\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", alternative)
        if m and m.group(1):
            out.append((m.group(1), m.group(2)))
    return out


def exact_dependency(fields: dict[str, str]) -> str | None:
    """The exact linux-image-<version>-<flavour> package a metapackage depends on."""
    for name, _ in _relations(fields):
        if _EXACT_IMAGE.fullmatch(name):
            return name
    return None


def release_of_package(package: str) -> str:
    """The kernel release an exact package name carries: linux-image-<release>[-unsigned]."""
    release = package.removeprefix("linux-image-")
    return release.removesuffix("-unsigned")


def split_parts(fields: dict[str, str], package: str) -> list[tuple[str, str]]:
    """The packages a split kernel package pins to its own release (sid: linux-binary-,
    linux-modules-, linux-base-<release>), with their exact versions; [] for one-.deb kernels."""
    release = release_of_package(package)
    own = re.compile(rf"linux-[a-z]+-{re.escape(release)}")
    return [
        (name, version)
        for name, version in _relations(fields)
        if version and name != package and own.fullmatch(name)
    ]


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
        raise BuildFailed(f"{what} failed: {tail[0]}")


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


@dataclass(frozen=True)
class Resolution:
    """What the index says a definition stands for today, before anything is downloaded."""

    suite: str
    package: str  # exact linux-image-<release> package
    version: str
    release: str  # `uname -r`, from the package name (checked against the tree on unpack)
    parts: tuple[tuple[str, str], ...] = ()  # further packages of a split kernel

    @property
    def downloaded(self) -> bool:
        return _complete(kernel_dir(self.package, self.version))


def private_apt(suite: str, architecture: str = "x86_64") -> PrivateApt:
    """The index of `suite` for one architecture (amd64's keeps its old place in the cache)."""
    deb = arch_of(architecture).deb
    return PrivateApt(paths.cache_dir() / "apt" / (suite if deb == "amd64" else f"{suite}-{deb}"),
                      suite, deb)  # fmt: skip


def resolve_version(
    defn: KernelDefinition, release: str = DEFAULT_RELEASE, log: Path | None = None
) -> Resolution:
    """The exact package and version a definition resolves to, from the index alone."""
    apt = private_apt(suite_of(defn, release), defn.architecture)
    with _locked(apt.base / "lock"):
        apt.prepare()
        return _resolve_exact(apt, defn.package, log)


def fresh_index(suite: str, log: Path | None = None, architecture: str = "x86_64") -> Path:
    """The private apt index of `suite`, fetched when missing or older than INDEX_MAX_AGE
    (what a build's inputs are resolved from); its lists directory."""
    apt = private_apt(suite, architecture)
    with _locked(apt.base / "lock"):
        apt.prepare()
        age = apt.index_age()
        if age is None or age > INDEX_MAX_AGE:
            _try_update(apt, log, must=age is None)
    return apt.lists


def resolve_versions(
    definitions: list[KernelDefinition], release: str = DEFAULT_RELEASE, log: Path | None = None
) -> list[Resolution]:
    """`resolve_version` for each definition (`amilab kernels`): nothing is downloaded but
    the indexes; suites are looked up side by side, each index fetched at most once."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="suite") as pool:
        futures = [pool.submit(resolve_version, d, release, log) for d in definitions]
        return [f.result() for f in futures]


def resolve_kernel(
    defn: KernelDefinition, release: str = DEFAULT_RELEASE, log: Path | None = None
) -> Kernel:
    """Resolve, download (once) and unpack (once) the kernel a definition names."""
    apt = private_apt(suite_of(defn, release), defn.architecture)
    with _locked(apt.base / "lock"):
        apt.prepare()
        found = _resolve_exact(apt, defn.package, log)
        unpacked = kernel_dir(found.package, found.version)
        wanted = [(found.package, found.version), *found.parts]
        debs = [_cached_deb(p, v) for p, v in wanted]
        if not _complete(unpacked):
            debs = [
                deb or _download(apt, p, v, log) for deb, (p, v) in zip(debs, wanted, strict=True)
            ]
            unpack([d for d in debs if d], unpacked, log)
    return _kernel_from(unpacked, defn, found.package, found.version, apt.release)


def cached_kernel(defn: KernelDefinition, package: str, version: str) -> Kernel:
    """A kernel already unpacked in the cache (e.g. the one an AKI record names), offline."""
    unpacked = kernel_dir(package, version)
    if not _complete(unpacked):
        raise BuildFailed(f"kernel {package}={version} is not in the cache ({unpacked})")
    return _kernel_from(unpacked, defn, package, version, defn.suite)


def _resolve_exact(apt: PrivateApt, meta: str, log: Path | None) -> Resolution:
    """The exact package; refreshes the index when it is missing, old, or lacks it."""
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
        # with an index to fall back on, one try: a mirror mid-sync costs no waiting
        apt.update(log, attempts=UPDATE_ATTEMPTS if must else 1)
        return True
    except EnvironmentProblem:
        if must:
            raise
        if log:
            with open(log, "a") as f:
                f.write("amilab: mirror unreachable; using the cached package index\n")
        return False


def _lookup(apt: PrivateApt, package: str) -> Resolution | None:
    fields = apt.show(package)
    if fields is None:
        return None
    if _EXACT_IMAGE.fullmatch(package):
        exact, target = package, fields
    else:
        name = exact_dependency(fields)
        if name is None:
            raise BadInput(
                f"kernel package {package!r} depends on no linux-image-<version> package"
            )
        shown = apt.show(name)
        if shown is None:
            return None
        exact, target = name, shown
    return Resolution(
        suite=apt.release,
        package=exact,
        version=target["Version"],
        release=release_of_package(exact),
        parts=tuple(split_parts(target, exact)),
    )


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


def unpack(debs: Path | list[Path], dest: Path, log: Path | None = None) -> None:
    """dpkg-deb -x every package into a temporary sibling, run depmod, then rename into place
    atomically (a split kernel's packages make one tree, as installing them would)."""
    debs = [debs] if isinstance(debs, Path) else list(debs)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], log, what=f"dpkg-deb -x {deb.name}")
        release = release_of(tmp)
        if modules_root(tmp) != tmp / "lib/modules":
            (tmp / "lib").symlink_to("usr/lib")  # depmod -b looks in <base>/lib/modules
        # the .deb carries no modules.dep (its postinst runs depmod); make it here once
        _run(["depmod", "-b", str(tmp), release], log, what=f"depmod {release}")
        (tmp / ".amilab-complete").write_text("".join(f"{d.name}\n" for d in debs))
        if dest.exists():
            shutil.rmtree(dest)  # an incomplete leftover from an older layout
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def _first(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _kernel_from(
    unpacked: Path, defn: KernelDefinition, package: str, version: str, suite: str
) -> Kernel:
    release = release_of(unpacked)
    modules = modules_root(unpacked) / release
    # /boot/vmlinuz-<release> (one-.deb kernels) or <modules>/vmlinuz (linux-binary-<release>)
    vmlinuz = _first([unpacked / "boot" / f"vmlinuz-{release}", modules / "vmlinuz"])
    config = _first([unpacked / "boot" / f"config-{release}", modules / "config"])
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


# ---------------------------------------------------------------------------------------------
# the kernel behind a registered AKI


def kernel_for_record(rec: ImageRecord, log: Path | None = None) -> Kernel:
    """The unpacked kernel a registered AKI stands for: a catalogue kernel (fetched again
    when the cache lost it) or one registered with `register-kernel` (its stored files)."""
    if rec.image_type != "kernel":
        raise BadInput(f"{rec.image_id} is a {rec.image_type} image, not a kernel")
    settings = rec.kernel_settings
    if settings.pv_grub:
        raise BadInput(f"{rec.image_id} is PV-GRUB: it boots the image's own kernel")
    if own := rec.extra.get(OWN_KERNEL_KEY):
        from builder.build import own_kernel  # own_kernel imports this module

        return own_kernel.stored_kernel(rec, own)
    name = settings.definition or ""
    if not name:  # registered from a bundle or an import: a vmlinuz alone
        raise BadInput(f"{rec.image_id} was registered without its modules (not from the "
                       "catalogue or register-kernel)")  # fmt: skip
    catalogue = load_catalogue()
    if name not in catalogue:
        raise BadInput(f"{rec.image_id} comes from kernel {name!r}, no longer in the catalogue")
    defn, package, version = catalogue[name], settings.package or "", rec.package_version or ""
    if not package or not version:
        raise BadInput(f"{rec.image_id} names no kernel package and version")
    if _complete(kernel_dir(package, version)):
        return cached_kernel(defn, package, version)
    return fetch_exact(defn, package, version, log)


def fetch_exact(
    defn: KernelDefinition, package: str, version: str, log: Path | None = None
) -> Kernel:
    """Download and unpack one exact kernel package again (an AKI whose cache was cleared)."""
    suite = suite_of(defn)
    apt = private_apt(suite, defn.architecture)
    with _locked(apt.base / "lock"):
        apt.prepare()
        unpacked = kernel_dir(package, version)
        if not _complete(unpacked):
            found = _resolve_exact(apt, package, log)
            if found.version != version:
                raise BadInput(
                    f"{package}={version} is no longer in the {suite} archive "
                    f"(it now has {found.version}); build the image again"
                )
            wanted = [(package, version), *found.parts]
            debs = [_cached_deb(p, v) or _download(apt, p, v, log) for p, v in wanted]
            unpack(debs, unpacked, log)
    return _kernel_from(unpacked, defn, package, version, suite)
