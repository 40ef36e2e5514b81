"""Kernels (AKIs): `kernels/*.yaml` definitions resolved to an exact Debian kernel package.

A definition names a package (usually a metapackage such as linux-image-cloud-amd64) and the
Debian suite it comes from. Resolving it asks a private apt configuration per suite under the
cache — never the host's apt state — which exact versioned package the metapackage points at,
downloads that .deb once and unpacks it once. A rebuild with everything cached touches the
network only when the index is over a day old, and falls back to the cached index when the
mirror cannot be reached.

Releases package their kernels differently, and resolution follows what the index says rather
than assuming one shape (kernel_tree.py reads both). The catalogue is kernel_catalogue.py's,
the private apt apt_index.py's, the control fields deb_control.py's.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from builder import ids
from builder.build import own_kernel
from builder.build.apt_index import (
    PrivateApt,
    cached_deb,
    download_deb,
    prepared,
    private_apt,
    refresh_when_old,
    try_update,
)
from builder.build.deb_control import EXACT_IMAGE, exact_dependency, release_of_package, split_parts
from builder.build.kernel_catalogue import (
    DEFAULT_RELEASE,
    SUITES,
    KernelDefinition,
    definition,
    load_catalogue,
    suite_of,
)
from builder.build.kernel_tree import Kernel, complete, kernel_dir, kernel_from, unpack
from builder.errors import BadInput, BuildFailed
from builder.images.records import ImageRecord

# the names callers have always imported from here (their homes are the modules above)
__all__ = [
    "DEFAULT_RELEASE",
    "SUITES",
    "Kernel",
    "KernelDefinition",
    "Resolution",
    "cached_kernel",
    "definition",
    "fetch_exact",
    "fresh_index",
    "kernel_by_ref",
    "kernel_for_record",
    "load_catalogue",
    "private_apt",
    "resolve_kernel",
    "resolve_version",
    "resolve_versions",
    "suite_of",
]


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
        return complete(kernel_dir(self.package, self.version))


def resolve_version(
    defn: KernelDefinition, release: str = DEFAULT_RELEASE, log: Path | None = None
) -> Resolution:
    """The exact package and version a definition resolves to, from the index alone."""
    with prepared(suite_of(defn, release), defn.architecture) as apt:
        return _resolve_exact(apt, defn.package, log)


def fresh_index(suite: str, log: Path | None = None, architecture: str = "x86_64") -> Path:
    """The private apt index of `suite`, fetched when missing or older than INDEX_MAX_AGE
    (what a build's inputs are resolved from); its lists directory."""
    with prepared(suite, architecture) as apt:
        refresh_when_old(apt, log)
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
    with prepared(suite_of(defn, release), defn.architecture) as apt:
        found = _resolve_exact(apt, defn.package, log)
        unpacked = kernel_dir(found.package, found.version)
        if not complete(unpacked):
            _unpack_from(apt, [(found.package, found.version), *found.parts], unpacked, log)
    return kernel_from(unpacked, defn, found.package, found.version, apt.release)


def cached_kernel(defn: KernelDefinition, package: str, version: str) -> Kernel:
    """A kernel already unpacked in the cache (e.g. the one an AKI record names), offline."""
    unpacked = kernel_dir(package, version)
    if not complete(unpacked):
        raise BuildFailed(f"kernel {package}={version} is not in the cache ({unpacked})")
    # a definition that follows the recipe's release has no suite of its own: the default
    # release's, as suite_of gives (an empty suite left headers looked up nowhere)
    return kernel_from(unpacked, defn, package, version, suite_of(defn))


def _unpack_from(
    apt: PrivateApt, wanted: list[tuple[str, str]], unpacked: Path, log: Path | None
) -> None:
    """Unpack the packages `wanted` into one tree, each .deb from the cache or downloaded."""
    debs = [cached_deb(p, v) or download_deb(apt, p, v, log) for p, v in wanted]
    unpack(debs, unpacked, log)


def kernel_by_ref(ref: str, release: str = DEFAULT_RELEASE, log: Path | None = None) -> Kernel:
    """A kernel named in the catalogue, resolved. `aki-` IDs live in the registry: the pipeline
    looks the record up and calls `cached_kernel` with its package and version."""
    if ids.is_id(ref, "aki"):
        raise BadInput(f"kernel {ref}: an aki- ID is looked up in the registry, not the catalogue")
    return resolve_kernel(definition(ref), release, log)


def _resolve_exact(apt: PrivateApt, meta: str, log: Path | None) -> Resolution:
    """The exact package; refreshes the index when it is missing, old, or lacks it."""
    refreshed = refresh_when_old(apt, log)
    found = _lookup(apt, meta)
    if found is None and not refreshed:
        try_update(apt, log, must=True)
        found = _lookup(apt, meta)
    if found is None:
        raise BadInput(f"kernel package {meta!r} is not in the {apt.release} archive")
    return found


def _lookup(apt: PrivateApt, package: str) -> Resolution | None:
    fields = apt.show(package)
    if fields is None:
        return None
    if EXACT_IMAGE.fullmatch(package):
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


def kernel_for_record(rec: ImageRecord, log: Path | None = None) -> Kernel:
    """The unpacked kernel a registered AKI stands for: a catalogue kernel (fetched again
    when the cache lost it) or one registered with `register-kernel` (its stored files)."""
    if rec.image_type != "kernel":
        raise BadInput(f"{rec.image_id} is a {rec.image_type} image, not a kernel")
    settings = rec.kernel_settings
    if settings.pv_grub:
        raise BadInput(f"{rec.image_id} is PV-GRUB: it boots the image's own kernel")
    if own := rec.extra.get(own_kernel.OWN_KERNEL_KEY):
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
    if complete(kernel_dir(package, version)):
        return cached_kernel(defn, package, version)
    return fetch_exact(defn, package, version, log)


def fetch_exact(
    defn: KernelDefinition, package: str, version: str, log: Path | None = None
) -> Kernel:
    """Download and unpack one exact kernel package again (an AKI whose cache was cleared)."""
    suite = suite_of(defn)
    with prepared(suite, defn.architecture) as apt:
        unpacked = kernel_dir(package, version)
        if not complete(unpacked):
            found = _resolve_exact(apt, package, log)
            if found.version != version:
                raise BadInput(
                    f"{package}={version} is no longer in the {suite} archive "
                    f"(it now has {found.version}); build the image again"
                )
            _unpack_from(apt, [(package, version), *found.parts], unpacked, log)
    return kernel_from(unpacked, defn, package, version, suite)
