"""PV-GRUB: the AKI that boots whatever kernel the image's own GRUB menu names.

On EC2, a paravirtual AMI could name a PV-GRUB kernel (pv-grub-hd0, pv-grub-hd00) instead of
a Linux AKI; PV-GRUB read /boot/grub/menu.lst from the image and loaded the kernel and
initrd its default entry named. amilab does the same outside the guest: it reads the menu
(menu.lst, else grub.cfg) through libguestfs without writing the disk, takes the default
entry's kernel, initrd and command line, and the harness boots them directly.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from builder import paths
from builder.build.bzimage import kernel_release
from builder.errors import BadInput
from builder.ids import make_id
from builder.images import factory
from builder.images.records import KernelSettings
from builder.images.registry import ImageRecord, Registry
from builder.state import workarea

NAME = "pv-grub-hd0"
ALIASES = ("pv-grub", "pv-grub-hd0", "pv-grub-hd00")
MENUS = ("/boot/grub/menu.lst", "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
# The AKI's bytes: what this loader does, so its ID changes if its behaviour does.
_DESCRIPTOR = {
    "loader": "amilab pv-grub",
    "version": 1,
    "menus": list(MENUS),
    "entry": "default",
}


@dataclass(frozen=True)
class MenuEntry:
    title: str
    kernel: str  # path inside the filesystem that holds it
    initrd: str | None
    args: str
    partition: int | None = None  # GRUB legacy `root (hd0,N)`: N + 1; None for the whole disk


def is_pv_grub(record: ImageRecord | None) -> bool:
    return bool(record and record.kernel_settings.pv_grub)


def register(registry: Registry | None = None) -> ImageRecord:
    """Register (once; the ID derives from the descriptor's bytes) and return the AKI."""
    registry = registry or Registry()
    blob = json.dumps(_DESCRIPTOR, sort_keys=True, indent=1).encode() + b"\n"
    digest = hashlib.sha256(blob).hexdigest()
    aki_id = make_id("aki", digest)
    if existing := registry.get(aki_id):
        return existing
    location = paths.artifacts_dir() / digest[:2] / f"{digest}.pv-grub.json"
    workarea.write_file(location, blob)
    record = factory.content_image(
        digest,
        NAME,
        str(location),
        KernelSettings(definition="pv-grub", pv_grub=True),
        description="PV-GRUB: boots the kernel the image's /boot/grub/menu.lst names",
    )
    return registry.register([record])[0]


def parse_menu_lst(text: str) -> MenuEntry:
    """GRUB legacy: `default N`, then `title` blocks with root/kernel/initrd."""
    default = 0
    entries: list[dict[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if "=" in word and not rest:  # `default=1` style
            word, _, rest = word.partition("=")
        word, rest = word.lower(), rest.strip()
        if word == "default" and not entries:
            default = int(rest) if rest.isdigit() else 0
        elif word == "title":
            entries.append({"title": rest})
        elif entries and word in ("root", "kernel", "initrd"):
            entries[-1][word] = rest
    usable = [e for e in entries if e.get("kernel")]
    if not usable:
        raise ValueError("no title entry with a kernel line")
    entry = (
        entries[default] if default < len(entries) and entries[default].get("kernel") else usable[0]
    )
    path, _, args = entry["kernel"].partition(" ")
    initrd = entry.get("initrd", "").split(" ")[0] or None
    return MenuEntry(
        entry["title"],
        _strip_device(path),
        initrd and _strip_device(initrd),
        args.strip(),
        _legacy_partition(entry.get("root", "")),
    )


def parse_grub_cfg(text: str) -> MenuEntry:
    """GRUB 2: the `set default=` entry (a number or a title) among the menuentry blocks."""
    default = "0"
    entries: list[dict[str, str]] = []
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if depth == 0 and (m := re.match(r"set\s+default=[\"']?([^\"'\s]*)", line)):
            default = m.group(1)
        if line.startswith("menuentry ") and depth == 0:
            try:
                title = shlex.split(line[len("menuentry ") :].rstrip("{").strip())[0]
            except (ValueError, IndexError):
                title = "?"
            entries.append({"title": title})
        elif entries and depth == 1:
            word, _, rest = line.partition(" ")
            if word in ("linux", "linux16", "linuxefi"):
                entries[-1]["kernel"] = rest.strip()
            elif word in ("initrd", "initrd16", "initrdefi"):
                entries[-1]["initrd"] = rest.strip()
        depth += line.count("{") - line.count("}")
    usable = [e for e in entries if e.get("kernel")]
    if not usable:
        raise ValueError("no menuentry with a linux line")
    chosen = usable[0]
    if default.isdigit() and int(default) < len(entries) and entries[int(default)].get("kernel"):
        chosen = entries[int(default)]
    elif not default.isdigit():
        chosen = next((e for e in usable if e["title"] == default), usable[0])
    path, _, args = chosen["kernel"].partition(" ")
    initrd = chosen.get("initrd", "").split(" ")[0] or None
    return MenuEntry(
        chosen["title"], _strip_device(path), initrd and _strip_device(initrd), args.strip()
    )


def _strip_device(path: str) -> str:
    """`(hd0,0)/boot/vmlinuz` → `/boot/vmlinuz`."""
    return re.sub(r"^\([^)]*\)", "", path)


def _legacy_partition(root: str) -> int | None:
    m = re.match(r"\(hd\d+,(\d+)\)", root.strip())
    return int(m.group(1)) + 1 if m else None


@dataclass(frozen=True)
class LoadedMenu:
    entry: MenuEntry
    menu: str  # which file was read, e.g. /boot/grub/menu.lst on /dev/sda3
    kernel: Path
    initrd: Path | None
    release: str | None


def load(disk: Path, fmt: str, dest: Path, image_ref: str) -> LoadedMenu:
    """Read the image's menu read-only and copy its default entry's kernel and initrd out."""
    from builder.disk.inspection import open_guestfs

    g = open_guestfs(disk, fmt, readonly=True)
    try:
        filesystems = [d for d, t in g.list_filesystems().items() if t not in ("swap", "unknown")]
        found: tuple[MenuEntry, str, str] | None = None
        for device in filesystems:
            try:
                g.mount_ro(device, "/")
            except RuntimeError:
                continue
            try:
                for menu in MENUS:
                    if not g.is_file(menu):
                        continue
                    text = g.read_file(menu).decode(errors="replace")
                    parse = parse_menu_lst if menu.endswith("menu.lst") else parse_grub_cfg
                    try:
                        entry = parse(text)
                    except ValueError:
                        continue
                    found = (entry, menu, device)
                    break
            finally:
                g.umount_all()
            if found:
                break
        if not found:
            raise BadInput(
                f"{image_ref}: PV-GRUB found no usable menu (a {' or '.join(MENUS)} with a "
                "default entry naming a kernel) on any filesystem of the image"
            )
        entry, menu, device = found
        kernel_dev = _device_for(entry, device, filesystems)
        g.mount_ro(kernel_dev, "/")
        try:
            for path in filter(None, (entry.kernel, entry.initrd)):
                if not g.is_file(path):
                    raise BadInput(f"{image_ref}: {menu} names {path}, which {kernel_dev} lacks")
            kernel = dest / "pv-grub-vmlinuz"
            g.download(entry.kernel, str(kernel))
            initrd = None
            if entry.initrd:
                initrd = dest / "pv-grub-initrd"
                g.download(entry.initrd, str(initrd))
        finally:
            g.umount_all()
    finally:
        g.close()
    return LoadedMenu(
        entry, f"{menu} on {device}", kernel, initrd, kernel_release(kernel.read_bytes())
    )


def _device_for(entry: MenuEntry, menu_device: str, filesystems: list[str]) -> str:
    """The filesystem `root (hd0,N)` names (menu.lst), else the one holding the menu."""
    if entry.partition is None:
        return menu_device
    base = re.sub(r"\d+$", "", menu_device)
    wanted = f"{base}{entry.partition}"
    return wanted if wanted in filesystems else menu_device
