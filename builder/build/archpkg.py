"""Packages of another architecture than the host's, unpacked into the cache for their files.

The generated ramdisk needs the target's busybox, and an arm64 disk needs GRUB's arm64-efi
modules; neither is installable on an amd64 host without multiarch. Both come from the
machine's mirror through the private apt index of that architecture (builder.build.apt_index),
are downloaded once, and are unpacked once with dpkg-deb (nothing is installed on the host).
"""

from __future__ import annotations

from pathlib import Path

from builder import paths
from builder.build.apt_index import cached_deb, download_deb, prepared, refresh_when_old
from builder.build.arch import of as arch_of
from builder.build.kernel_tree import unpack_debs
from builder.errors import EnvironmentProblem

SUITE = "bookworm"  # the host's release: the same busybox and GRUB versions it has itself


def unpacked(package: str, architecture: str, log: Path | None = None) -> Path:
    """The tree of `package` for `architecture` (EC2's name), from the SUITE index."""
    deb_arch = arch_of(architecture).deb
    with prepared(SUITE, architecture) as apt:
        refresh_when_old(apt, log)
        fields = apt.show(package)
        if fields is None:
            raise EnvironmentProblem(f"{package} ({deb_arch}) is not in the {SUITE} archive")
        version = fields["Version"]
        dest = paths.cache_dir() / "archpkg" / f"{package}_{version.replace(':', '%3a')}_{deb_arch}"
        if (dest / ".amilab-complete").exists():
            return dest
        deb = cached_deb(package, version)
        if deb is None or not deb.name.endswith(f"_{deb_arch}.deb"):
            deb = download_deb(apt, package, version, log)
        unpack_debs([deb], dest, log)
    return dest
