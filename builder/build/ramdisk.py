"""Ramdisks (ARIs): amilab's own busybox initrd, or the one the image's initramfs-tools makes.

The generated ramdisk is written by Python (cpio newc + gzip) rather than by GNU cpio so every
byte is decided here: entries sorted by path, inode numbers counted from 1, owner root, mtime 0,
gzip without name or time. Building it twice from the same kernel gives the same bytes, hence
the same ARI ID.
"""

from __future__ import annotations

import functools
import gzip
import io
import lzma
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from builder import ids
from builder.build import chroot
from builder.build.kernel_tree import Kernel
from builder.errors import BadInput, BuildFailed, EnvironmentProblem

BUSYBOX = Path("/bin/busybox")
MODULES_LIST = "etc/amilab-ramdisk/modules"
_COMPRESSED = (".ko.xz", ".ko.zst", ".ko.gz")

# ---------------------------------------------------------------------------------------------
# /init

# The script is a file of its own (shipped as package data) so it can be read, linted and run
# as shell; @RELEASE@ and @MODULES_LIST@ are filled in per ramdisk.
INIT_FILE = "ramdisk-init.sh"


@functools.cache
def init_template() -> str:
    """The /init script as shipped, before substitution (bytes decoded as they are: the ARI's
    ID derives from them)."""
    return resources.files("builder.build").joinpath(INIT_FILE).read_bytes().decode()


def init_script(release: str) -> str:
    return init_template().replace("@RELEASE@", release).replace("@MODULES_LIST@", MODULES_LIST)


# ---------------------------------------------------------------------------------------------
# modules


@dataclass
class ModuleIndex:
    """What depmod knows about one modules tree, enough to pick a dependency closure."""

    deps: dict[str, list[str]] = field(default_factory=dict)  # relpath -> dependency relpaths
    by_name: dict[str, str] = field(default_factory=dict)  # module name -> relpath
    builtin: set[str] = field(default_factory=set)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # exact alias -> module names
    softdeps: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # pre, post


def module_name(relpath: str) -> str:
    """The kernel's name for a module file: .../xen-blkfront.ko.xz -> xen_blkfront."""
    base = relpath.rsplit("/", 1)[-1]
    for suffix in (*_COMPRESSED, ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_index(
    modules_dep: str, builtin: str = "", aliases: str = "", softdep: str = ""
) -> ModuleIndex:
    """Build the index from the text of modules.dep, modules.builtin, .alias and .softdep."""
    index = ModuleIndex()
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        index.deps[path] = rest.split()
        index.by_name[module_name(path)] = path
    index.builtin = {module_name(p) for p in builtin.split()}
    for line in aliases.splitlines():
        words = line.split()
        # wildcard aliases match hardware IDs; only exact names matter for softdeps
        if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
            index.aliases.setdefault(words[1], []).append(module_name(words[2]))
    for line in softdep.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        pre, post = index.softdeps.setdefault(module_name(words[1]), ([], []))
        target = pre  # depmod also writes bare names, which modprobe treats as pre:
        for word in words[2:]:
            if word in ("pre:", "post:"):
                target = pre if word == "pre:" else post
            else:
                target.append(word)
    return index


def read_index(modules_dir: Path) -> ModuleIndex:
    def text(name: str) -> str:
        p = modules_dir / name
        return p.read_text() if p.exists() else ""

    if not (modules_dir / "modules.dep").exists():
        raise BuildFailed(f"{modules_dir}: no modules.dep (depmod was not run)")
    return parse_index(
        text("modules.dep"), text("modules.builtin"), text("modules.alias"), text("modules.softdep")
    )


def _lookup(index: ModuleIndex, name: str) -> list[str] | None:
    """Module files for a name or alias; [] when built in; None when the kernel lacks it."""
    norm = name.replace("-", "_")
    if norm in index.by_name:
        return [index.by_name[norm]]
    if norm in index.builtin:
        return []
    targets = index.aliases.get(name) or index.aliases.get(norm)
    if targets:
        return [index.by_name[t] for t in targets if t in index.by_name]
    return None


def load_order(
    index: ModuleIndex, names: tuple[str, ...] | list[str], where: str = ""
) -> list[str]:
    """Module files for `names` and everything they need, each after what it depends on.

    Hard dependencies come from modules.dep; soft ones (ext4 wants crc32c before it) are added
    when the kernel has them. A name the kernel neither has nor builds in is a bad definition.
    """
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        pre, post = index.softdeps.get(module_name(path), ([], []))
        for soft in pre:
            for p in _lookup(index, soft) or []:
                visit(p)
        # modprobe loads modules.dep's list from its end; follow the same order
        for dep in reversed(index.deps.get(path, [])):
            visit(dep)
        order.append(path)
        for soft in post:
            for p in _lookup(index, soft) or []:
                visit(p)

    for name in names:
        found = _lookup(index, name)
        if found is None:
            raise BadInput(f"{where}ramdisk_modules: {name!r} is neither a module nor built in")
        for path in found:
            visit(path)
    return order


def _decompressed(src: Path) -> bytes:
    """Module bytes busybox insmod can load (it cannot read .ko.xz/.ko.zst)."""
    name = src.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(src.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(src.read_bytes())
    if name.endswith(".ko.zst"):
        if not shutil.which("zstd"):
            raise EnvironmentProblem("zstd is missing (needed to unpack .ko.zst modules)")
        res = subprocess.run(["zstd", "-dc", str(src)], capture_output=True, check=False)
        if res.returncode != 0:
            raise BuildFailed(f"zstd -d {src}: {res.stderr.decode(errors='replace').strip()}")
        return res.stdout
    return src.read_bytes()


def plain_path(relpath: str) -> str:
    for suffix in _COMPRESSED:
        if relpath.endswith(suffix):
            return relpath[: -len(suffix)] + ".ko"
    return relpath


def stage_modules(kernel: Kernel, staging: Path) -> list[str]:
    """Copy the closure into staging/lib/modules/<release> and run depmod on it; returns
    the load order (paths relative to the modules directory)."""
    where = f"kernel {kernel.name}: "
    order = load_order(read_index(kernel.modules_dir), kernel.ramdisk_modules, where)
    dest = staging / "lib/modules" / kernel.release
    dest.mkdir(parents=True)
    for rel in order:
        target = dest / plain_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_decompressed(kernel.modules_dir / rel))
    plain = [plain_path(r) for r in order]
    # depmod orders modules.dep by modules.order, not by directory listing: keep it stable
    (dest / "modules.order").write_text("".join(f"{p}\n" for p in sorted(plain)))
    builtin = kernel.modules_dir / "modules.builtin"
    if builtin.exists():
        shutil.copyfile(builtin, dest / "modules.builtin")
    # modules.dep/.alias let the kernel's request_module() (via /sbin/modprobe) find them too
    _depmod(staging, kernel.release)
    return plain


def _depmod(base: Path, release: str) -> None:
    if not shutil.which("depmod"):
        raise EnvironmentProblem("depmod is missing (install kmod)")
    res = subprocess.run(
        ["depmod", "-b", str(base), release], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise BuildFailed(f"depmod for the ramdisk failed: {res.stderr.strip()}")


# ---------------------------------------------------------------------------------------------
# cpio newc


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # including the file type bits
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, e: Entry, nlink: int) -> bytes:
    name = e.path.encode() + b"\0"
    fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, *e.rdev, len(name), 0)
    head = b"070701" + b"".join(b"%08x" % f for f in fields) + name
    return head + b"\0" * (-len(head) % 4)


def write_cpio(entries: list[Entry], out: io.BufferedIOBase) -> None:
    """A newc archive with every variable field fixed: uid/gid 0, mtime 0, inodes counted."""
    for ino, e in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        out.write(_header(ino, e, 2 if stat.S_ISDIR(e.mode) else 1))
        out.write(e.data + b"\0" * (-len(e.data) % 4))
    out.write(_header(0, Entry("TRAILER!!!", 0), 1))


def tree_entries(base: Path, prefix: str = "") -> list[Entry]:
    """Entries for every file, directory and symlink under base (modes kept, times dropped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = prefix + str(p.relative_to(base))
            st = p.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(rel, stat.S_IFLNK | 0o777, os.readlink(p).encode()))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(rel, stat.S_IFDIR | 0o755))
            else:
                mode = 0o755 if perm & 0o111 else 0o644
                out.append(Entry(rel, stat.S_IFREG | mode, p.read_bytes()))
    return out


def with_parents(entries: list[Entry]) -> list[Entry]:
    """Add a directory entry for every parent that has none, so extraction never fails."""
    have = {e.path for e in entries}
    extra = []
    for e in entries:
        parts = e.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in have:
                have.add(d)
                extra.append(Entry(d, stat.S_IFDIR | 0o755))
    return entries + extra


# ---------------------------------------------------------------------------------------------
# generated ramdisk


def _is_static_elf(path: Path) -> bool:
    """True for a little-endian ELF (32- or 64-bit) without a PT_INTERP (dynamic loader)
    header."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] != 1:
            return False
        if head[4] == 2:
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
        else:
            (phoff,) = struct.unpack_from("<I", head, 28)
            phentsize, phnum = struct.unpack_from("<HH", head, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
    return 3 not in types


def busybox_for(architecture: str) -> Path:
    """The static busybox of the kernel's architecture: the host's own for x86_64, else
    busybox-static of that architecture from the mirror (unpacked, never installed)."""
    if architecture == "x86_64":
        return BUSYBOX
    from builder.build import archpkg

    return archpkg.unpacked("busybox-static", architecture) / "bin/busybox"


def _applets(busybox: Path) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True)
    except OSError as e:  # another architecture's, not runnable here
        return subprocess.CompletedProcess([], 1, "", str(e))
    if res.returncode != 0 and busybox != BUSYBOX and BUSYBOX.exists():
        # the same Debian release's busybox-static is built with one config on every
        # architecture: the host's lists the same applets
        return _applets(BUSYBOX)
    return res


def busybox_entries(busybox: Path = BUSYBOX) -> list[Entry]:
    if not busybox.exists() or not _is_static_elf(busybox):
        raise EnvironmentProblem(f"{busybox} is missing or not static (install busybox-static)")
    res = _applets(busybox)
    if res.returncode != 0:
        raise EnvironmentProblem(f"{busybox} --list-full failed: {res.stderr.strip()}")
    out = [Entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())]
    for applet in sorted(set(res.stdout.split())):
        if applet != "bin/busybox":
            out.append(Entry(applet, stat.S_IFLNK | 0o777, b"/bin/busybox"))
    return out


def ramdisk_entries(kernel: Kernel, staging: Path) -> list[Entry]:
    order = stage_modules(kernel, staging)
    entries = busybox_entries(busybox_for(kernel.architecture))
    entries += tree_entries(staging / "lib", prefix="lib/")
    entries += [Entry("lib", stat.S_IFDIR | 0o755)]
    entries += [Entry(d, stat.S_IFDIR | 0o755) for d in ("dev", "proc", "sys", "newroot", "run")]
    entries += [Entry("tmp", stat.S_IFDIR | 0o1777)]
    # the kernel opens /dev/console for /init before /init can mount devtmpfs
    entries += [Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]
    entries += [Entry("init", stat.S_IFREG | 0o755, init_script(kernel.release).encode())]
    entries += [
        Entry(MODULES_LIST, stat.S_IFREG | 0o644, "".join(f"{p}\n" for p in order).encode())
    ]
    return with_parents(entries)


def build_generated(kernel: Kernel, out: Path) -> Path:
    """amilab's busybox initrd for `kernel`, written to `out` (gzip'd cpio newc)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="amilab-ramdisk-") as tmp:
        entries = ramdisk_entries(kernel, Path(tmp))
        partial = out.with_name(f".{out.name}.partial")
        with (
            open(partial, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        ):
            write_cpio(entries, gz)  # type: ignore[arg-type]
        os.replace(partial, out)
    return out


def ari_id(path: Path) -> str:
    return ids.make_id("ari", ids.file_sha256(path))


# ---------------------------------------------------------------------------------------------
# distro ramdisk


def build_distro(root: Path, kernel: Kernel, out: Path, log: Path) -> Path:
    """The initrd the image's own initramfs-tools makes for `kernel` (mkinitramfs in a chroot)."""
    release = kernel.release
    if not (root / "usr/sbin/mkinitramfs").exists():
        raise BuildFailed("ramdisk: distro needs initramfs-tools in the image (not installed)")
    for base in ("lib/modules", "usr/lib/modules"):
        if (root / base / release / "modules.dep").exists():
            break
    else:
        raise BuildFailed(f"ramdisk: distro needs /lib/modules/{release} in the image (modules)")
    config = root / "boot" / f"config-{release}"
    added_config = not config.exists()
    if added_config:
        config.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel.config, config)  # initramfs-tools hooks read the kernel config
    inside = f"/tmp/amilab-initrd-{os.getpid()}.img"
    produced = root / inside.lstrip("/")
    try:
        # SOURCE_DATE_EPOCH makes mkinitramfs fix times and use cpio --reproducible
        res = chroot.run(
            root, ["mkinitramfs", "-o", inside, release], env={"SOURCE_DATE_EPOCH": "0"}, log=log
        )
        if res.returncode != 0 or not produced.exists():
            raise BuildFailed(
                f"ramdisk: mkinitramfs {release} failed (exit {res.returncode}); see {log}"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(produced, out)
    finally:
        produced.unlink(missing_ok=True)
        if added_config:
            config.unlink(missing_ok=True)
    return out
