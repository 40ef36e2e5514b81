"""GRUB for HVM images, installed into a disk image file without mounting anything.

BIOS: `grub-mkimage` builds core.img, which goes into the BIOS boot partition (GPT) or the
gap after the MBR; boot.img's first 440 bytes go into the MBR with core.img's sector patched
in — exactly what grub-bios-setup does, but grub-bios-setup insists on probing a real block
device. UEFI: `grub-mkimage -O x86_64-efi` makes EFI/BOOT/BOOTX64.EFI (the removable-media
path every firmware looks at) on a FAT EFI system partition made by mkfs.vfat and mtools.
Both core images carry a tiny config that finds the root filesystem by UUID and then read
/boot/grub/grub.cfg from it, so the kernel, initrd and menu live inside the image.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

from builder.build import reproducible
from builder.build.arch import of as arch_of
from builder.build.layout import DiskLayout
from builder.children import ending_with_us
from builder.errors import BuildFailed, EnvironmentProblem

_COMMON = [
    "part_gpt", "part_msdos", "ext2", "fat", "search", "search_fs_uuid", "normal", "linux",
    "configfile", "serial", "terminal", "echo", "test", "gzio", "minicmd", "sleep", "reboot",
    "halt", "ls", "cat",
]  # fmt: skip
MODULES = {
    "i386-pc": ["biosdisk", *_COMMON],
    "x86_64-efi": ["efi_gop", *_COMMON],
    "arm64-efi": ["efi_gop", *_COMMON],
}
# GRUB's platforms an image of each architecture carries: an i386 kernel boots from BIOS only
# (GRUB x86_64-efi cannot hand over to a 32-bit kernel's EFI stub), arm64 from UEFI only
PLATFORMS = {"x86_64": ("i386-pc", "x86_64-efi"), "i386": ("i386-pc",), "arm64": ("arm64-efi",)}
_KERNEL_SECTOR = 0x5C  # boot.S: GRUB_BOOT_MACHINE_KERNEL_SECTOR
_BLOCKLIST_START = 0x200 - 12  # diskboot.S: first blocklist entry's start sector
_MBR_CODE = 440  # bytes of boot code before the disk signature and partition table


def grub_dir(platform: str = "i386-pc") -> Path:
    """Where `platform`'s modules are: the host's GRUB, or for arm64-efi (an arm64 package,
    not installable on an amd64 host) grub-efi-arm64-bin unpacked from the mirror."""
    if "AMILAB_GRUB_DIR" in os.environ:
        return Path(os.environ["AMILAB_GRUB_DIR"])
    if platform == "arm64-efi" and not Path("/usr/lib/grub/arm64-efi").is_dir():
        from builder.build import archpkg

        return archpkg.unpacked("grub-efi-arm64-bin", "arm64") / "usr/lib/grub"
    return Path("/usr/lib/grub")


def kernel_args(uuid: str, base_cmdline: str, extra: str) -> str:
    return " ".join(a for a in (f"root=UUID={uuid} ro", base_cmdline, extra) if a)


def grub_cfg(release: str, args: str, initrd: bool) -> str:
    lines = [
        "# written by amilab",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set default=0",
        "set timeout=0",
        f"menuentry 'Debian GNU/Linux, with Linux {release}' {{",
        f"    linux /boot/vmlinuz-{release} {args}",
    ]
    if initrd:
        lines.append(f"    initrd /boot/initrd.img-{release}")
    return "\n".join(lines + ["}", ""])


def menu_lst(release: str, args: str, initrd: bool, root_partition: int | None) -> str:
    """GRUB legacy menu, as PV-GRUB (EC2's pv-grub-hd0/hd00 kernels) reads it."""
    root = "(hd0)" if root_partition is None else f"(hd0,{root_partition - 1})"
    lines = [
        "# written by amilab for PV-GRUB",
        "default 0",
        "timeout 0",
        "",
        f"title Debian GNU/Linux, with Linux {release}",
        f"root {root}",
        f"kernel /boot/vmlinuz-{release} {args}",
    ]
    if initrd:
        lines.append(f"initrd /boot/initrd.img-{release}")
    return "\n".join(lines + [""])


def first_entry(text: str, menu: str) -> tuple[int, int, str, bool] | None:
    """The first boot entry of a grub.cfg (`menu="grub"`) or menu.lst (`"menu"`): its line
    span [start, end), the kernel release it boots (from /boot/vmlinuz-<release>) and whether
    it loads an initrd; None when the file has no entry booting a /boot/vmlinuz-*."""
    lines = text.splitlines()
    opener = "menuentry " if menu == "grub" else "title "
    starts = [i for i, ln in enumerate(lines) if ln.lstrip().startswith(opener)]
    for n, start in enumerate(starts):
        if menu == "grub":
            end = next((i + 1 for i in range(start + 1, len(lines)) if lines[i].strip() == "}"),
                       len(lines))  # fmt: skip
        else:
            end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        block = lines[start:end]
        words = [w for ln in block for w in ln.split()]
        kernels = [w for w in words if w.startswith("/boot/vmlinuz-")]
        if kernels:
            release = kernels[0].removeprefix("/boot/vmlinuz-")
            initrd = any(ln.split()[:1] == ["initrd"] for ln in block)
            return start, end, release, initrd
    return None


def with_default_entry(text: str, menu: str, release: str) -> str:
    """`text` (grub.cfg or menu.lst) with a copy of its first entry, for `release`, put before
    it, so the menu's default (entry 0) boots that kernel and the old one stays listed: what
    Debian's update-grub does when a newer kernel is installed. Same arguments, same root."""
    found = first_entry(text, menu)
    if found is None:
        raise BuildFailed(f"no boot entry for a /boot/vmlinuz-* in the image's {menu} menu")
    start, end, old, _ = found
    lines = text.splitlines()
    entry = [ln.replace(f"vmlinuz-{old}", f"vmlinuz-{release}")
             .replace(f"initrd.img-{old}", f"initrd.img-{release}")
             .replace(f"Linux {old}", f"Linux {release}") for ln in lines[start:end]]  # fmt: skip
    return "\n".join(lines[:start] + entry + lines[start:]) + "\n"


def install_boot_files(
    root: Path,
    vmlinuz: Path,
    config: Path,
    release: str,
    initrd: Path | None,
    args: str,
    root_partition: int | None,
    architecture: str = "x86_64",
) -> None:
    """Kernel, initrd and menus into the tree (before mkfs), plus GRUB's module directories
    so `insmod` in grub.cfg works as on an installed system."""
    boot = root / "boot"
    (boot / "grub").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vmlinuz, boot / f"vmlinuz-{release}")
    shutil.copyfile(config, boot / f"config-{release}")
    if initrd:
        shutil.copyfile(initrd, boot / f"initrd.img-{release}")
    (boot / "grub/grub.cfg").write_text(grub_cfg(release, args, initrd is not None))
    (boot / "grub/menu.lst").write_text(menu_lst(release, args, initrd is not None, root_partition))
    for platform in PLATFORMS[architecture]:
        src = grub_dir(platform) / platform
        if src.is_dir():
            dest = boot / "grub" / platform
            shutil.copytree(src, dest, dirs_exist_ok=True, ignore=_only_modules)
    for name in ("vmlinuz", "initrd.img"):  # the symlinks Debian's kernel postinst makes
        link = root / name
        if not link.exists():
            target = f"boot/{name}-{release}"
            if name == "vmlinuz" or initrd:
                link.symlink_to(target)


def _only_modules(directory: str, names: list[str]) -> list[str]:
    keep = (".mod", ".lst")
    return [n for n in names if not n.endswith(keep)]


def _mkimage(platform: str, out: Path, early_cfg: Path, log: Path) -> None:
    if not shutil.which("grub-mkimage"):
        raise EnvironmentProblem("grub-mkimage is missing (grub-pc-bin, grub-efi-amd64-bin)")
    argv = [
        "grub-mkimage",
        "--directory", str(grub_dir(platform) / platform),
        "--format", platform,
        "--prefix", "/boot/grub",
        "--config", str(early_cfg),
        "--output", str(out),
        *MODULES[platform],
    ]  # fmt: skip
    _checked(argv, log, f"grub-mkimage for {platform}")


def _checked(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as f:
        f.write(("# " + " ".join(argv) + "\n").encode())
        result = subprocess.run(
            ending_with_us(argv), stdout=f, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )  # fmt: skip
    if result.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise BuildFailed(f"bootloader: {what} failed: {' '.join(tail)}")


def install_bios(disk: Path, layout: DiskLayout, work: Path, early_cfg: Path, log: Path) -> None:
    core = work / "core.img"
    _mkimage("i386-pc", core, early_cfg, log)
    core_bytes = core.read_bytes()
    if "bios" in layout.parts:
        start, room = layout.parts["bios"]
    else:  # MBR: the gap between the MBR and the first partition
        start = 512
        room = min(o for o, _ in layout.parts.values()) - start
    if len(core_bytes) > room:
        raise BuildFailed(f"bootloader: core.img ({len(core_bytes)} bytes) exceeds {room} bytes")
    sector = start // 512
    boot_img = (grub_dir("i386-pc") / "i386-pc/boot.img").read_bytes()
    with open(disk, "r+b") as f:
        f.seek(start)
        f.write(core_bytes)
        # diskboot.img (core.img's first sector) loads the rest from the sector after it
        f.seek(start + _BLOCKLIST_START)
        f.write(struct.pack("<Q", sector + 1))
        f.seek(0)
        f.write(boot_img[:_MBR_CODE])
        f.seek(_KERNEL_SECTOR)
        f.write(struct.pack("<Q", sector))


def install_uefi(
    disk: Path,
    layout: DiskLayout,
    work: Path,
    early_cfg: Path,
    log: Path,
    epoch: int = 0,
    architecture: str = "x86_64",
) -> None:
    target = arch_of(architecture)
    assert target.grub_efi and target.efi_loader, architecture
    efi = work / target.efi_loader
    _mkimage(target.grub_efi, efi, early_cfg, log)
    offset, size = layout.parts["esp"]
    esp = work / "esp.img"
    with open(esp, "wb") as f:
        f.truncate(size)
    # reproducible: a volume ID from the root's UUID instead of the clock, constants for
    # mkfs.vfat's other time-based fields, and directory entries dated at the epoch (mtools
    # reads SOURCE_DATE_EPOCH)
    volume_id = layout.uuid.replace("-", "")[:8]
    mkfs = ["mkfs.vfat", "--invariant", "-i", volume_id, "-F", "32", "-n", "EFI", str(esp)]
    _checked(mkfs, log, "mkfs.vfat", reproducible.fake_time_env(epoch))
    env = reproducible.fake_time_env(epoch)
    _checked(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], log, "mmd", env)
    os.utime(efi, (epoch, epoch))
    copy = ["mcopy", "-m", "-i", str(esp), str(efi), f"::/EFI/BOOT/{target.efi_loader}"]
    _checked(copy, log, "mcopy", env)
    _copy_into(esp, disk, offset)
    esp.unlink()


def _copy_into(src: Path, disk: Path, offset: int, chunk: int = 1 << 20) -> None:
    """Write src into disk at offset, skipping all-zero chunks so the disk stays sparse."""
    zero = bytes(chunk)
    with open(src, "rb") as s, open(disk, "r+b") as d:
        pos = 0
        while block := s.read(chunk):
            if block != zero[: len(block)]:
                d.seek(offset + pos)
                d.write(block)
            pos += len(block)


def install(
    disk: Path,
    layout: DiskLayout,
    uuid: str,
    work: Path,
    log: Path,
    epoch: int = 0,
    architecture: str = "x86_64",
) -> None:
    if layout.boot is None:
        return
    early_cfg = work / "grub-early.cfg"
    early_cfg.write_text(
        f"search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"
    )
    if layout.boot in ("bios", "hybrid"):
        install_bios(disk, layout, work, early_cfg, log)
    if layout.boot in ("uefi", "hybrid"):
        install_uefi(disk, layout, work, early_cfg, log, epoch, architecture)
