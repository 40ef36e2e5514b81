"""Kernels from files (`amilab register-kernel`): a bzImage with its modules, or .debs.

What a kernel build leaves (arch/x86/boot/bzImage and a `make modules_install
INSTALL_MOD_PATH=X` tree, X/lib/modules/<release>/, or a tarball of it as EC2's kernel
vendors published them) or a Debian kernel package is checked and stored once, by the
vmlinuz's digest, under amilab's home rather than the cache (nothing could fetch it again),
in the shape of an unpacked package: boot/vmlinuz-<release>, boot/config-<release> and
lib/modules/<release>/ with depmod run. It is staged in a hidden sibling and renamed into
place, so a refused input leaves nothing behind. The AKI registered for it records that
folder; `kernel.kernel_for_record` reads it back as a `Kernel`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from builder import ids, paths
from builder.build import bzimage
from builder.build.kernel_catalogue import KernelDefinition, load_catalogue
from builder.build.kernel_tree import (
    Kernel,
    complete,
    first_file,
    kernel_from,
    modules_root,
    release_of,
    run_logged,
    unpack,
)
from builder.errors import BadInput, BuildFailed
from builder.images import factory
from builder.images.records import ImageRecord, KernelSettings
from builder.images.registry import Registry

STORE = "kernels"  # under amilab_home(): one folder per vmlinuz digest
DEFAULT_DRIVERS_FROM = "debian-cloud"  # whose ramdisk driver list an own kernel's ramdisk gets
# used when that definition is not in the catalogue (a wheel without kernels/): the same list
FALLBACK_DRIVERS = (
    "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "sd_mod", "nvme",
    "xen-blkfront", "ext4",
)  # fmt: skip
# links `make modules_install` leaves at the top of the tree, pointing at the build's source:
# not part of the modules, and outside the tree by design, so they are left out
_SOURCE_LINKS = ("build", "source")
CMDLINE = "console=ttyS0"
# an AKI record's extra key naming the files `register-kernel` stored for it
OWN_KERNEL_KEY = "own_kernel"


def store_root() -> Path:
    return paths.amilab_home() / STORE


@dataclass(frozen=True)
class Stored:
    """A kernel's files as stored: the folder, and what the AKI record says about it."""

    folder: Path
    release: str
    digest: str
    vmlinuz: Path  # boot/vmlinuz-<release>, or a split kernel's <modules>/vmlinuz
    package: str = ""  # a .deb's linux-image package, "" for files
    version: str = ""


# ---------------------------------------------------------------------------------------------
# reading it back


def stored_kernel(rec: ImageRecord, own: dict[str, Any]) -> Kernel:
    """The Kernel of an AKI registered from files; BadInput when they were removed."""
    folder = Path(str(own.get("store", "")))
    if not folder.is_absolute() or not complete(folder):
        raise BadInput(
            f"{rec.image_id}: the kernel files register-kernel stored ({folder}) are gone; "
            "register the kernel again"
        )
    defn = KernelDefinition(
        name=rec.name,
        package=str(own.get("package") or ""),
        ramdisk_modules=tuple(own.get("ramdisk_modules") or ()),
        cmdline=rec.kernel_settings.cmdline or CMDLINE,
    )
    return kernel_from(
        folder, defn, defn.package, str(own.get("version") or ""), suite=""
    )


# ---------------------------------------------------------------------------------------------
# checking and storing


def _need_file(path: Path, what: str) -> None:
    if not path.exists():
        raise BadInput(f"{path}: no such {what}")
    if not path.is_file():
        raise BadInput(f"{path}: not a file ({what} expected)")


@contextmanager
def _staging() -> Iterator[Path]:
    """A hidden folder beside the store (same filesystem: the result is renamed into place);
    removed, with the store folder if it was made for it, unless it was consumed."""
    root = store_root()
    made = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".stage-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):
                root.rmdir()  # only when empty: nothing was stored


def _place(tree: Path, digest: str) -> Path:
    """Rename a finished tree to its digest's folder; an identical one stored earlier wins."""
    dest = store_root() / digest
    if complete(dest):
        return dest
    if dest.exists():
        shutil.rmtree(dest)  # an incomplete leftover
    os.rename(tree, dest)
    return dest


def _within(base: PurePosixPath, link_dir: PurePosixPath, target: str) -> bool:
    """Whether a link at link_dir pointing at target stays inside base (all relative)."""
    if target.startswith("/"):
        return False
    parts: list[str] = list(link_dir.parts)
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part != ".":
            parts.append(part)
    return len(parts) >= len(base.parts) and tuple(parts[: len(base.parts)]) == base.parts


def _check_links(tree: Path, shown: str) -> None:
    """Refuse links that leave the modules tree and anything but files, folders and links."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = PurePosixPath(p.relative_to(tree).as_posix())
            if p.is_symlink():
                if rel.name in _SOURCE_LINKS and len(rel.parts) == 1:
                    continue  # not copied (see _SOURCE_LINKS)
                if not _within(PurePosixPath(), rel.parent, os.readlink(p)):
                    raise BadInput(f"{shown}: link {rel} -> {os.readlink(p)} leaves the tree")
            elif not (p.is_dir() or p.is_file()) or st.st_mode & 0o6000:
                raise BadInput(f"{shown}: {rel} is not a plain file, folder or link")


def _safe_members(tar: tarfile.TarFile, shown: str) -> list[tarfile.TarInfo]:
    """The members to extract; BadInput for any that would write outside the folder or make
    a device, a fifo or a setuid file."""
    keep = []
    for m in tar.getmembers():
        name = m.name
        path = PurePosixPath(name)
        if name.startswith("/") or ".." in path.parts:
            raise BadInput(f"{shown}: member {name!r} points outside the tarball's folder")
        if m.issym() or m.islnk():
            if path.name in _SOURCE_LINKS and m.issym():
                continue  # build/source links to the kernel source: not modules
            base = PurePosixPath()
            at = path.parent if m.issym() else base
            if not _within(base, at, m.linkname):
                raise BadInput(f"{shown}: link {name!r} -> {m.linkname!r} leaves the tarball")
        elif not (m.isfile() or m.isdir()):
            raise BadInput(f"{shown}: member {name!r} is a device, fifo or other special file")
        if m.mode & 0o6000:
            raise BadInput(f"{shown}: member {name!r} is setuid/setgid")
        keep.append(m)
    return keep


def _extract_tarball(tarball: Path, dest: Path) -> None:
    shown = str(tarball)
    try:
        with tarfile.open(tarball) as tar:
            members = _safe_members(tar, shown)
            for m in members:
                m.uid = m.gid = 0
                m.uname = m.gname = "root"
            tar.extractall(dest, members=members, numeric_owner=True)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BadInput(f"{shown}: not a readable tarball: {e}") from None


def _looks_like_tree(d: Path) -> bool:
    return (d / "kernel").is_dir() or any(d.glob("modules.*"))


def _find_tree(root: Path, release: str, shown: str, named: bool) -> Path:
    """The <release> folder in X/lib/modules/, or root itself when it is the tree (`named`:
    its own name counts; a tarball's extraction folder has none), or root's one subfolder."""
    for rel in ("lib/modules", "usr/lib/modules"):
        base = root / rel
        if base.is_dir() and not (root / rel.split("/")[0]).is_symlink():
            names = sorted(p.name for p in base.iterdir() if p.is_dir())
            if release in names:
                return base / release
            raise BadInput(
                f"{shown}: modules tree for {', '.join(names) or 'no release'}, "
                f"but the kernel is {release}"
            )
    if named and _looks_like_tree(root):
        if root.name != release:
            raise BadInput(f"{shown}: modules tree {root.name}, but the kernel is {release}")
        return root
    subdirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if len(subdirs) == 1 and not _looks_like_tree(root):
        return _find_tree(subdirs[0], release, shown, named=True)
    raise BadInput(
        f"{shown}: no modules tree (expected X/lib/modules/{release}/ or a folder {release}/)"
    )


def _depmod(tree_root: Path, release: str, log: Path | None) -> None:
    try:
        run_logged(["depmod", "-b", str(tree_root), release], log, what=f"depmod {release}")
    except BuildFailed as e:
        raise BadInput(f"modules for {release}: {e}") from None


def store_files(
    vmlinuz: Path,
    modules: Path | None = None,
    config: Path | None = None,
    log: Path | None = None,
) -> Stored:
    """Check a bzImage (and its modules tree or tarball, and config) and store them."""
    _need_file(vmlinuz, "kernel file")
    if modules is not None and not modules.exists():
        raise BadInput(f"{modules}: no such modules folder or tarball")
    if config is not None:
        _need_file(config, "kernel config")
    release = bzimage.release_of_file(vmlinuz)
    with _staging() as stage:
        tree = stage / "tree"
        boot, mods = tree / "boot", tree / "lib/modules"
        boot.mkdir(parents=True)
        mods.mkdir(parents=True)
        shutil.copyfile(vmlinuz, boot / f"vmlinuz-{release}")
        digest = ids.file_sha256(boot / f"vmlinuz-{release}")  # what was copied, not reread
        if config is not None:
            shutil.copyfile(config, boot / f"config-{release}")
        else:  # the generated ramdisk and the image's /boot want one; the build gave none
            (boot / f"config-{release}").write_text("# no config given to register-kernel\n")
        if modules is None:
            (mods / release).mkdir()
        else:
            if modules.is_dir():
                src, named = modules, True
            else:
                src, named = stage / "tarball", False
                src.mkdir()
                _extract_tarball(modules, src)
            found = _find_tree(src, release, str(modules), named)
            _check_links(found, str(modules))
            shutil.copytree(
                found,
                mods / release,
                symlinks=True,
                ignore=lambda d, names: [
                    n for n in names if Path(d) == found and n in _SOURCE_LINKS
                    and (found / n).is_symlink()
                ],
            )
        _depmod(tree, release, log)
        (tree / ".amilab-complete").write_text("")
        folder = _place(tree, digest)
        return Stored(folder, release, digest, folder / "boot" / f"vmlinuz-{release}")


def _deb_field(deb: Path, name: str) -> str:
    res = subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=False
    )
    return res.stdout.strip() if res.returncode == 0 else ""


def store_debs(debs: list[Path], log: Path | None = None) -> Stored:
    """Unpack Debian kernel packages (one bookworm-style linux-image .deb, or a split kernel's
    linux-image, linux-binary, linux-modules and linux-base .debs together) and store them."""
    if not debs:
        raise BadInput("--deb: no package given")
    for deb in debs:
        _need_file(deb, "Debian package")
        if not _deb_field(deb, "Package"):
            raise BadInput(f"{deb}: not a Debian package")
    shown = ", ".join(str(d) for d in debs)
    with _staging() as stage:
        tree = stage / "tree"
        try:
            unpack(debs, tree, log)
        except BuildFailed as e:
            if "modules tree" not in str(e):  # dpkg-deb or depmod failed: say which
                raise BadInput(f"{shown}: {e}") from None
            hint = ""
            if any("linux-binary-" in _deb_field(d, "Depends") for d in debs):
                hint = "; a split kernel: add its linux-binary, linux-modules and linux-base .debs"
            raise BadInput(f"{shown}: holds no kernel (no modules tree{hint})") from None
        release = release_of(tree)
        modules = modules_root(tree) / release
        found = first_file([tree / "boot" / f"vmlinuz-{release}", modules / "vmlinuz"])
        if found is None:
            raise BadInput(f"{shown}: holds no kernel (no vmlinuz for {release})")
        named = bzimage.release_of_file(found)
        if named != release:
            raise BadInput(f"{shown}: vmlinuz names {named}, but its modules tree is {release}")
        if first_file([tree / "boot" / f"config-{release}", modules / "config"]) is None:
            (tree / "boot").mkdir(exist_ok=True)
            (tree / "boot" / f"config-{release}").write_text("# the package held no config\n")
        _check_links(modules, shown)
        images = [d for d in debs if _deb_field(d, "Package").startswith("linux-image-")]
        source = images[0] if images else debs[0]
        package, version = _deb_field(source, "Package"), _deb_field(source, "Version")
        digest = ids.file_sha256(found)
        folder = _place(tree, digest)
        return Stored(folder, release, digest, folder / found.relative_to(tree), package, version)


# ---------------------------------------------------------------------------------------------
# registering


def default_drivers() -> tuple[str, ...]:
    catalogue = load_catalogue()
    if DEFAULT_DRIVERS_FROM in catalogue:
        return catalogue[DEFAULT_DRIVERS_FROM].ramdisk_modules
    return FALLBACK_DRIVERS


def register(stored: Stored, name: str | None = None, registry: Registry | None = None,
             headers: Path | None = None) -> ImageRecord:  # fmt: skip
    """The AKI for stored files (registered once: an AKI's ID derives from its bytes, and a
    kernel registered before, from the catalogue or from files, is returned as it is);
    `headers`: its build tree as stored (builder.modules.own_headers)."""
    registry = registry or Registry()
    what = f"{stored.package} {stored.version}" if stored.package else "files"
    own = {
        "store": str(stored.folder),
        "package": stored.package,
        "version": stored.version,
        "ramdisk_modules": list(default_drivers()),
        **({"headers": str(headers)} if headers else {}),
    }
    rec = factory.content_image(
        stored.digest,
        name or f"kernel-{stored.release}",
        str(stored.vmlinuz),
        KernelSettings(package=stored.package or None, cmdline=CMDLINE),
        release=stored.release,
        version=stored.version or None,
        description=f"kernel {stored.release} registered from {what}",
        extra={OWN_KERNEL_KEY: own},
    )
    return registry.register([rec])[0]
