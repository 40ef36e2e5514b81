"""`amilab inspect`: what a disk holds, through libguestfs, read-only.

Partitions, filesystems, the OS, the bootloader, the kernels in /boot and the module trees
under /lib/modules, and for each kernel whether it can find a virtio disk: virtio_blk and
virtio_pci built in (modules.builtin, /boot/config-*) or in its initrd (whose cpio archives,
compressed or not, are listed here without unpacking anything).
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from builder.errors import BadInput, EnvironmentProblem

VIRTIO_NEEDED = ("virtio_blk", "virtio_pci")
OTHER_DISK_DRIVERS = ("virtio_scsi", "ahci", "ata_piix", "sd_mod", "nvme", "xen_blkfront")
MAX_INITRD = 512 << 20
MAX_INITRD_UNPACKED = 2 << 30
_KERNEL_PREFIXES = ("vmlinuz-", "vmlinux-", "kernel-", "bzImage-")
_INITRD_NAMES = ("initrd.img-{r}", "initramfs-{r}.img", "initrd-{r}.img", "initrd-{r}")


# --- libguestfs --------------------------------------------------------------------------


def libguestfs_env() -> None:
    """KVM only where the CPU advertises it (DESIGN.md: /dev/kvm alone hangs guests here);
    otherwise the direct backend under TCG."""
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if " vmx" not in flags and " svm" not in flags:
        os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")


def open_guestfs(disk: Path, fmt: str, readonly: bool = True) -> Any:
    try:
        import guestfs
    except ImportError:
        raise EnvironmentProblem("python3-guestfs is missing (scripts/setup.sh)") from None
    libguestfs_env()
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(disk), readonly=1 if readonly else 0, format=fmt)
    try:
        g.launch()
    except RuntimeError as e:
        g.close()
        first = str(e).strip().splitlines()[0] if str(e).strip() else "?"
        raise EnvironmentProblem(f"libguestfs could not start its appliance: {first}") from None
    return g


@contextlib.contextmanager
def guest_disk(
    path: Path, source_format: str | None = None
) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """Validate any input disk and yield (file, qemu format, source description). A VMDK
    goes to libguestfs only after amilab's reader has validated it; an OVA is unpacked."""
    from builder.disk.convert import open_source

    work = Path(tempfile.mkdtemp(prefix="amilab-inspect-"))
    try:
        with open_source(path, work, source_format) as source:
            yield source.path, source.format, source.describe()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def inspect_disk(path: Path, source_format: str | None = None) -> dict[str, Any]:
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    with guest_disk(path, source_format) as (disk, fmt, source):
        g = open_guestfs(disk, fmt)
        try:
            report = inspect_guest(g)
        finally:
            g.close()
    report["source"] = source
    return report


def inspect_guest(g: Any) -> dict[str, Any]:
    """Inspect the launched handle's first disk (mounts read-only, unmounts at the end)."""
    report: dict[str, Any] = {
        "partitioning": _partitioning(g),
        "filesystems": _filesystems(g),
        "bootloader": {"mbr": mbr_code(g), "efi": _efi_loaders(g)},
        "os": None,
        "kernels": [],
        "problems": [],
    }
    roots = g.inspect_os()
    if not roots:
        report["problems"].append("no operating system found (libguestfs inspection)")
        return report
    root = roots[0]
    report["os"] = _os(g, root)
    mount_os(g, root, readonly=True)
    try:
        report["bootloader"]["config"] = [
            p for p in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/grub/menu.lst",
                        "/boot/extlinux/extlinux.conf", "/boot/syslinux/syslinux.cfg",
                        "/boot/loader/loader.conf")
            if g.is_file(p)
        ]
        report["kernels"] = list_kernels(g)
    finally:
        g.umount_all()
    report["problems"] += boot_problems(report)
    return report


def mount_os(g: Any, root: str, readonly: bool) -> None:
    mount_all(g, g.inspect_get_mountpoints(root), readonly)


def mount_all(g: Any, mounts: dict[str, str], readonly: bool) -> None:
    for mp in sorted(mounts, key=len):
        # e.g. an fstab entry that does not mount: inspect what can be mounted
        with contextlib.suppress(RuntimeError):
            (g.mount_ro if readonly else g.mount)(mounts[mp], mp)


def _partitioning(g: Any) -> dict[str, Any]:
    dev = g.list_devices()[0]
    out: dict[str, Any] = {"device_size": g.blockdev_getsize64(dev), "table": None, "parts": []}
    try:
        out["table"] = g.part_get_parttype(dev)
    except RuntimeError:
        return out  # a filesystem on the whole disk
    for p in g.part_list(dev):
        n = p["part_num"]
        part: dict[str, Any] = {"number": n, "start": p["part_start"], "size": p["part_size"]}
        if out["table"] == "gpt":
            with contextlib.suppress(RuntimeError):
                part["name"] = g.part_get_name(dev, n)
                part["type"] = g.part_get_gpt_type(dev, n)
        else:
            with contextlib.suppress(RuntimeError):
                part["type"] = f"{g.part_get_mbr_id(dev, n):#04x}"
                part["bootable"] = g.part_get_bootable(dev, n)
        out["parts"].append(part)
    return out


def _filesystems(g: Any) -> list[dict[str, Any]]:
    out = []
    for dev, fstype in sorted(g.list_filesystems().items()):
        fs: dict[str, Any] = {"device": dev, "type": fstype}
        if fstype not in ("unknown", ""):
            with contextlib.suppress(RuntimeError):
                fs["uuid"] = g.vfs_uuid(dev)
                fs["label"] = g.vfs_label(dev)
        out.append(fs)
    return out


def mbr_code(g: Any) -> str | None:
    dev = g.list_devices()[0]
    mbr = g.pread_device(dev, 512, 0)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return None
    for marker, name in ((b"GRUB", "grub2"), (b"LILO", "lilo"), (b"SYSLINUX", "syslinux")):
        if marker in mbr[:440]:
            return name
    return "unknown" if mbr[:440].strip(b"\0") else None


def _efi_loaders(g: Any) -> list[str]:
    found = []
    for dev, fstype in g.list_filesystems().items():
        if fstype != "vfat":
            continue
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        try:
            for p in ("/EFI/BOOT/BOOTX64.EFI", "/EFI/debian/grubx64.efi",
                      "/EFI/ubuntu/grubx64.efi", "/EFI/systemd/systemd-bootx64.efi"):
                if g.case_sensitive_path(p) and g.is_file(g.case_sensitive_path(p)):
                    found.append(f"{dev}:{p}")
        except RuntimeError:
            pass
        finally:
            g.umount_all()
    return found


def _os(g: Any, root: str) -> dict[str, Any]:
    def get(fn: str) -> Any:
        try:
            return getattr(g, fn)(root)
        except RuntimeError:
            return None

    return {
        "root": root,
        "type": get("inspect_get_type"),
        "distro": get("inspect_get_distro"),
        "product": get("inspect_get_product_name"),
        "version": f"{get('inspect_get_major_version')}.{get('inspect_get_minor_version')}",
        "arch": get("inspect_get_arch"),
        "hostname": get("inspect_get_hostname"),
        "root_uuid": _safe(g.vfs_uuid, root),
        "root_label": _safe(g.vfs_label, root),
        "root_type": _safe(g.vfs_type, root),
        "mountpoints": get("inspect_get_mountpoints"),
    }


def _safe(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except RuntimeError:
        return None


def list_kernels(g: Any) -> list[dict[str, Any]]:
    boot = g.ls("/boot") if g.is_dir("/boot") else []
    modules_root = next((d for d in ("/lib/modules", "/usr/lib/modules") if g.is_dir(d)), None)
    releases = set(g.ls(modules_root)) if modules_root else set()
    kernels = {}
    for name in boot:
        for prefix in _KERNEL_PREFIXES:
            if name.startswith(prefix) and g.is_file(f"/boot/{name}"):
                kernels[name[len(prefix):]] = f"/boot/{name}"
    out = []
    for release in sorted(set(kernels) | releases):
        info: dict[str, Any] = {
            "release": release,
            "kernel": kernels.get(release),
            "modules": f"{modules_root}/{release}" if release in releases else None,
            "initrd": next(
                (f"/boot/{n.format(r=release)}" for n in _INITRD_NAMES
                 if n.format(r=release) in boot),
                None,
            ),
        }
        builtin = _builtin_drivers(g, info["modules"], release)
        in_initrd: set[str] = set()
        if info["initrd"]:
            try:
                in_initrd = initrd_modules(_download(g, info["initrd"]))
            except BadInput as e:
                info["initrd_error"] = str(e)
        drivers = {}
        for mod in (*VIRTIO_NEEDED, *OTHER_DISK_DRIVERS):
            drivers[mod] = "builtin" if mod in builtin else "initrd" if mod in in_initrd else None
        info["drivers"] = drivers
        info["virtio"] = all(drivers[m] for m in VIRTIO_NEEDED)
        out.append(info)
    return out


def _builtin_drivers(g: Any, modules: str | None, release: str) -> set[str]:
    found: set[str] = set()
    if modules and g.is_file(f"{modules}/modules.builtin"):
        for line in g.read_lines(f"{modules}/modules.builtin"):
            found.add(_module_name(line))
    config = f"/boot/config-{release}"
    if g.is_file(config):
        options = {"CONFIG_VIRTIO_BLK=y": "virtio_blk", "CONFIG_VIRTIO_PCI=y": "virtio_pci",
                   "CONFIG_SCSI_VIRTIO=y": "virtio_scsi", "CONFIG_SATA_AHCI=y": "ahci",
                   "CONFIG_BLK_DEV_SD=y": "sd_mod", "CONFIG_ATA_PIIX=y": "ata_piix"}
        for line in g.read_lines(config):
            if line in options:
                found.add(options[line])
    return found


def _download(g: Any, path: str) -> bytes:
    size = g.filesize(path)
    if size > MAX_INITRD:
        raise BadInput(f"{path}: initrd larger than {MAX_INITRD} bytes")
    with tempfile.NamedTemporaryFile(prefix="amilab-initrd-") as tmp:
        g.download(path, tmp.name)
        return Path(tmp.name).read_bytes()


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


# --- initrd listing ----------------------------------------------------------------------


def initrd_modules(data: bytes) -> set[str]:
    """Module names (virtio_blk, ...) among the files of an initrd."""
    return {_module_name(n) for n in initrd_files(data) if ".ko" in n.rsplit("/", 1)[-1]}


def initrd_files(data: bytes) -> list[str]:
    """Every file name in an initrd: concatenated cpio (newc) archives, each possibly
    compressed (gzip, xz, lzma, bzip2, zstd, lz4), as the kernel accepts them."""
    names: list[str] = []
    pos = 0
    while pos < len(data):
        while pos < len(data) and data[pos] == 0:
            pos += 1
        if pos >= len(data):
            break
        if data[pos : pos + 6] in (b"070701", b"070702"):
            stream = _Stream(iter([memoryview(data)[pos:]]))
            names += _cpio_names(stream)
            pos += stream.consumed
            continue
        names += _cpio_all(_Stream(_decompress(data[pos:])))
        break  # a compressed archive runs to the end of the file
    return names


def _cpio_all(stream: _Stream) -> list[str]:
    names = []
    while True:
        if not stream.skip_zeros():
            return names
        names += _cpio_names(stream)


def _cpio_names(stream: _Stream) -> list[str]:
    names = []
    while True:
        header = stream.read(110)
        if len(header) < 110 or header[:6] not in (b"070701", b"070702"):
            raise BadInput("initrd: not a cpio (newc) archive")
        try:
            size = int(header[54:62], 16)
            namesize = int(header[94:102], 16)
        except ValueError:
            raise BadInput("initrd: corrupt cpio header") from None
        name = stream.read(namesize)[:-1].decode(errors="replace")
        stream.read((4 - (110 + namesize) % 4) % 4)
        if name == "TRAILER!!!":
            return names
        stream.skip(size + (4 - size % 4) % 4)
        names.append(name)


class _Stream:
    """Reads from an iterator of chunks, counting what was consumed, bounded in size."""

    def __init__(self, chunks: Iterable[bytes | memoryview]) -> None:
        self.chunks = iter(chunks)
        self.buf = b""
        self.consumed = 0

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = next(self.chunks, None)
            if chunk is None:
                return
            self.buf += bytes(chunk)

    def read(self, n: int) -> bytes:
        if self.consumed + n > MAX_INITRD_UNPACKED:
            raise BadInput(f"initrd: unpacks past {MAX_INITRD_UNPACKED} bytes")
        self._fill(n)
        out, self.buf = self.buf[:n], self.buf[n:]
        self.consumed += len(out)
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.read(min(n, 1 << 20)))
            if not got:
                raise BadInput("initrd: cpio archive is truncated")
            n -= got

    def skip_zeros(self) -> bool:
        while True:
            self._fill(1)
            if not self.buf:
                return False
            stripped = self.buf.lstrip(b"\0")
            self.consumed += len(self.buf) - len(stripped)
            self.buf = stripped
            if self.buf:
                return True


def _decompress(data: bytes) -> Iterator[bytes]:
    if data[:2] == b"\x1f\x8b":
        yield from _zlib_chunks(data, zlib.decompressobj(wbits=47))
    elif data[:6] == b"\xfd7zXZ\x00" or data[:3] == b"\x5d\x00\x00":
        yield from _obj_chunks(data, lzma.LZMADecompressor())
    elif data[:3] == b"BZh":
        yield from _obj_chunks(data, bz2.BZ2Decompressor())
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        yield from _tool_chunks(data, ["zstd", "-dcq"])
    elif data[:4] in (b"\x02\x21\x4c\x18", b"\x04\x22\x4d\x18"):
        yield from _tool_chunks(data, ["lz4", "-dcq"])
    else:
        raise BadInput(f"initrd: unknown compression (magic {data[:4].hex()})")


def _zlib_chunks(data: bytes, d: Any) -> Iterator[bytes]:
    try:
        for i in range(0, len(data), 1 << 20):
            yield d.decompress(data[i : i + (1 << 20)], 8 << 20)
            while d.unconsumed_tail:
                yield d.decompress(d.unconsumed_tail, 8 << 20)
            if d.eof:
                return
    except zlib.error as e:
        raise BadInput(f"initrd: corrupt gzip data ({e})") from None


def _obj_chunks(data: bytes, d: Any) -> Iterator[bytes]:
    try:
        out = d.decompress(data, 8 << 20)
        yield out
        while not d.eof and not d.needs_input:
            yield d.decompress(b"", 8 << 20)
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise BadInput(f"initrd: corrupt compressed data ({e})") from None


def _tool_chunks(data: bytes, argv: list[str]) -> Iterator[bytes]:
    if not shutil.which(argv[0]):
        raise EnvironmentProblem(f"{argv[0]} is missing (needed to read this initrd)")
    with tempfile.TemporaryFile() as tmp:
        tmp.write(data)
        tmp.seek(0)
        proc = subprocess.Popen(argv, stdin=tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(1 << 20):
                yield chunk
        finally:
            proc.stdout.close()
            proc.kill()
            proc.wait()


# --- verdict -----------------------------------------------------------------------------


def boot_problems(report: dict[str, Any]) -> list[str]:
    """Why this disk would not boot here (HVM under QEMU, virtio disk and NIC)."""
    problems = []
    kernels = [k for k in report["kernels"] if k["kernel"]]
    if not kernels:
        problems.append("no kernel in /boot")
    elif not any(k["virtio"] for k in kernels):
        k = kernels[-1]
        missing = [m for m in VIRTIO_NEEDED if not k["drivers"].get(m)]
        where = f"its initrd {k['initrd']}" if k["initrd"] else "it has no initrd"
        problems.append(
            f"kernel {k['release']} cannot find a virtio disk: {', '.join(missing)} neither "
            f"built in nor in {where}"
        )
    for k in kernels:
        if not k["modules"]:
            problems.append(f"kernel {k['release']} has no /lib/modules/{k['release']}")
    boot = report["bootloader"]
    if not boot.get("mbr") and not boot.get("efi"):
        problems.append("no bootloader: no boot code in the MBR and no EFI loader on an ESP")
    return problems
