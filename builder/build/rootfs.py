"""The native engine's base root filesystem: mmdebstrap from the host's mirror, cached.

The base tarball is keyed by everything that decides its contents (release, mirror, package
set), so a rebuild of an unchanged recipe unpacks a cached tar and downloads nothing. The
downloaded .debs are kept as well, so a changed package list only fetches what is new.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from builder import paths
from builder.build.apt_index import private_apt
from builder.build.arch import ensure_foreign
from builder.build.arch import of as arch_of
from builder.build.mirror import host_mirror
from builder.children import ending_with_us
from builder.errors import BuildFailed, EnvironmentProblem

# What every image needs whatever its elements: an init, sshd reachable by the harness,
# networking, and kmod so modules can be loaded.
BASE_PACKAGES = ("systemd-sysv", "udev", "kmod", "openssh-server", "curl")
_CACHE_VERSION = "1"


def base_key(
    release: str,
    packages: list[str],
    index: str = "",
    deb_arch: str = "amd64",
    sources: list[str] | None = None,
) -> str:
    """`index`: the digest of the package index the set resolves through (a changed index
    may install other versions, so it makes a new base)."""
    blob = json.dumps(
        {
            "v": _CACHE_VERSION,
            "release": release,
            "arch": deb_arch,
            "variant": "minbase",
            "sources": sources or host_mirror().apt_lines(release),
            "packages": sorted(set(packages)),
            **({"index": index} if index else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def base_tarball(
    release: str, packages: list[str], log: Path, index: str = "", architecture: str = "x86_64"
) -> tuple[Path, bool]:
    """Path of the cached base tarball, building it if needed; (path, was_cached)."""
    packages = sorted({p for p in packages if not p.endswith("-")})
    target = arch_of(architecture)
    # the sources the private index was last fetched from: without the security suite where
    # the mirror could not serve its index for this architecture (apt_index.PrivateApt)
    sources = private_apt(release, architecture).apt_lines()
    key = base_key(release, packages, index, target.deb, sources)
    cache = paths.cache_dir() / "rootfs"
    tar = cache / f"{release}-{key}.tar"
    if tar.exists():
        return tar, True
    if not shutil.which("mmdebstrap"):
        raise EnvironmentProblem("mmdebstrap is missing (run scripts/setup.sh)")
    # amd64's keep their old place; another architecture's .debs must not be offered to it
    debs = paths.cache_dir() / "debs" / release
    if target.deb != "amd64":
        debs = debs.with_name(f"{release}-{target.deb}")
    ensure_foreign(target)  # arm64: qemu-user-static through binfmt_misc runs its scripts
    debs.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    partial = tar.with_suffix(f".tar.partial{os.getpid()}")
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        f"--architectures={target.deb}",
        "--format=tar",
        "--skip=essential/unlink",
        # nothing of the tree must survive a crash of the build: no fsync per file
        "--dpkgopt=force-unsafe-io",
        "--include=" + ",".join(packages),
        '--aptopt=Acquire::Retries "3"',
        # copies, not hard links: sync-out tars the directory, and a link count changing
        # while it reads makes tar fail with "file changed as we read it"
        f'--setup-hook=mkdir -p "$1"/var/cache/apt/archives/ && '
        f'(cp {debs}/*.deb "$1"/var/cache/apt/archives/ 2>/dev/null || true)',
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        release,
        str(partial),
        *sources,
    ]
    with open(log, "ab") as out:
        out.write(("# " + " ".join(argv) + "\n").encode())
        out.flush()
        # mmdebstrap assembles the tree in TMPDIR before writing the tar: in memory when
        # there is room (28 s instead of 39 s for the default recipe, measured cold)
        scratch = paths.scratch_dir()
        env = {**os.environ, **({"TMPDIR": str(scratch)} if scratch else {})}
        result = subprocess.run(ending_with_us(argv), stdout=out, stderr=subprocess.STDOUT,
                                env=env, check=False)  # fmt: skip
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise BuildFailed("mmdebstrap failed (log: {})\n{}".format(log, "\n".join(tail)))
    for stray in debs.glob("partial"):
        shutil.rmtree(stray, ignore_errors=True)
    os.rename(partial, tar)
    return tar, False


def unpack(tar: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ending_with_us(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-xpf",
                str(tar),
                "-C",
                str(root),
            ]
        ),
        check=True,
    )
