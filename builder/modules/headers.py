"""A kernel's linux-headers packages, from the kernel's own suite (never the host's headers).

Two uses: a DKMS or Kbuild build needs the whole set installed in the image's chroot
(`linux-headers-<release>` and the packages of the `linux` source it depends on: the
`-common` tree, `linux-kbuild-*`, `linux-compiler-gcc-N-*`), with their other dependencies
(the compiler, libc) coming from the image's own suite; the static check needs only the
flavour package's `Module.symvers` and `.config`, unpacked once into the cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder import paths
from builder.build.apt_index import (
    PrivateApt,
    cached_deb,
    download_deb,
    prepared,
    refresh_when_old,
    try_update,
)
from builder.build.kernel_catalogue import DEFAULT_RELEASE
from builder.build.kernel_tree import Kernel, unpack_debs
from builder.errors import EnvironmentProblem

_DEP = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]+)(?::[a-z0-9]+)?\s*(?:\(([^)]*)\))?\s*$")


@dataclass(frozen=True)
class HeaderPackages:
    """What building against one kernel takes."""

    release: str
    package: str  # linux-headers-<release>
    version: str
    debs: tuple[Path, ...]  # the kernel's own packages (source `linux`), downloaded
    needs: tuple[str, ...]  # their other dependencies, installed from the image's suite

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name.split("_", 1)[0] for p in self.debs)


def headers_package(release: str) -> str:
    return f"linux-headers-{release}"


def dependencies(fields: dict[str, str]) -> list[tuple[str, str]]:
    """(name, version constraint) of each Depends, first alternative of each."""
    out = []
    for group in filter(None, (g.strip() for g in fields.get("Depends", "").split(","))):
        m = _DEP.match(group.split("|", 1)[0])
        if m:
            out.append((m.group(1), m.group(2) or ""))
    return out


def _from_linux(fields: dict[str, str], name: str) -> bool:
    return (fields.get("Source") or name).split(" ", 1)[0] == "linux"


def _show_exact(apt: PrivateApt, package: str, version: str | None) -> dict[str, str] | None:
    fields = apt.show(package)
    if fields is None or (version and fields.get("Version") != version):
        return None
    return fields


def resolve(kernel: Kernel, log: Path | None = None, download: bool = True) -> HeaderPackages:
    """The header packages of `kernel` in its suite, downloaded once into the package cache
    (all of them, or with download=False only linux-headers-<release>); exit 3 naming the
    package when the mirror lacks it."""
    main = headers_package(kernel.release)
    suite = kernel.suite or DEFAULT_RELEASE
    with prepared(suite, kernel.architecture) as apt:
        # a cold cache has no index yet, an old one may predate these headers
        refreshed = refresh_when_old(apt, log)
        fields = _show_exact(apt, main, kernel.version)
        if fields is None and not refreshed:
            try_update(apt, log, must=True)
            fields = _show_exact(apt, main, kernel.version)
        if fields is None:
            have = apt.show(main)
            also = f" (it has {have['Version']})" if have else ""
            raise EnvironmentProblem(
                f"{main}={kernel.version} is not on the mirror's {suite} suite{also}: "
                f"out-of-tree modules for {kernel.release} need its headers"
            )
        wanted, needs, seen = [(main, kernel.version)], [], {main}
        todo = dependencies(fields)
        while todo:
            name, constraint = todo.pop(0)
            if name in seen or name.startswith("linux-image-"):
                # a backport's headers depend on their kernel's image package (source
                # linux-signed-*): the kernel itself, which the image boots as an AKI
                continue
            seen.add(name)
            dep = apt.show(name)
            if dep is not None and _from_linux(dep, name):
                wanted.append((name, dep["Version"]))
                todo += dependencies(dep)
            else:
                needs.append(name)
        if not download:
            wanted = wanted[:1]
        debs = tuple(cached_deb(p, v) or download_deb(apt, p, v, log) for p, v in wanted)
    return HeaderPackages(kernel.release, main, kernel.version, debs, tuple(sorted(needs)))


def headers_dir(package: str, version: str) -> Path:
    return paths.cache_dir() / "headers" / f"{package}_{version.replace(':', '%3a')}"


def unpacked_headers(kernel: Kernel, log: Path | None = None) -> Path:
    """/usr/src/linux-headers-<release> of the flavour package, unpacked once into the cache
    (written beside, then renamed: an interrupted unpack never looks done); its Module.symvers
    and .config are what the static check reads."""
    dest = headers_dir(headers_package(kernel.release), kernel.version)
    tree = dest / "usr/src" / headers_package(kernel.release)
    if (dest / ".amilab-complete").exists():
        return tree
    found = resolve(kernel, log, download=False)

    def has_symvers(unpacked: Path) -> None:
        if not (unpacked / "usr/src" / headers_package(kernel.release) / "Module.symvers").exists():
            raise EnvironmentProblem(f"{found.package}={found.version} has no Module.symvers")

    unpack_debs([found.debs[0]], dest, log, has_symvers)
    return tree
