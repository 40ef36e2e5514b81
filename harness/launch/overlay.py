"""The copy-on-write preparation VM Import does to an imported disk before its first boot.

Before an imported AMI boots, the harness makes a qcow2 overlay backed by the stored image
(which is never written) and, inside the overlay, sets up DHCP on the first NIC, /etc/fstab by
UUID with `nofail` for everything but the root, a root= by UUID on the kernel command line,
and the instance's SSH key for root. `amilab import` itself only converts, inspects and
registers (builder/images/importer.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from builder.disk import qemu_img
from builder.disk.inspection import boot_problems, list_kernels, mbr_code, mount_all, open_guestfs
from builder.errors import BadInput
from builder.images.importer import UnbootableImage
from builder.images.registry import ImageRecord

# Names the first virtio NIC gets under QEMU's PCI layouts, for configs that need a name.
FIRST_NIC_NAMES = ("eth0", "ens3", "ens4", "enp0s3", "enp0s4", "ens2")
_NETWORKD_FILE = "/etc/systemd/network/10-amilab-import.network"


def prepare_overlay(
    record: ImageRecord, overlay_path: Path, public_key: str, log: Path | None = None
) -> None:
    """Create `overlay_path` (qcow2 backed by the image, which stays untouched) and prepare
    the guest in it as VM Import does. Raises UnbootableImage saying why the disk cannot
    boot here; the overlay is removed then."""
    image = Path(record.locations.get("raw") or record.image_location)
    if not image.is_file():
        raise BadInput(f"{record.image_id}: image file {image} is missing")
    if not public_key.strip() or "\n" in public_key.strip():
        raise BadInput("public_key: one OpenSSH public key line expected")
    overlay_path.unlink(missing_ok=True)
    qemu_img.create(overlay_path, "qcow2", backing=image.resolve(), backing_format="raw")
    notes: list[str] = []
    try:
        g = open_guestfs(overlay_path, "qcow2", readonly=False)
        try:
            _prepare(g, public_key.strip(), record.extra, notes)
        finally:
            g.close()
    except BaseException:
        overlay_path.unlink(missing_ok=True)
        raise
    finally:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("".join(f"{n}\n" for n in notes))


def _prepare(g: Any, public_key: str, extra: dict[str, Any], notes: list[str]) -> None:
    # Import already inspected this disk: reuse its root and mountpoints, since inspection
    # is the slowest part of a libguestfs session under TCG (over a minute when loaded).
    os_ = extra.get("os") or {}
    root, mountpoints = os_.get("root"), os_.get("mountpoints")
    if not root or not mountpoints:
        roots = g.inspect_os()
        if not roots:
            raise UnbootableImage("unbootable here: no operating system found on the disk")
        root, mountpoints = roots[0], g.inspect_get_mountpoints(roots[0])
    bootloader = extra.get("bootloader") or {}
    mount_all(g, mountpoints, readonly=False)
    try:
        report = {
            "kernels": list_kernels(g),
            "bootloader": {"mbr": mbr_code(g), "efi": bootloader.get("efi") or []},
        }
        problems = boot_problems(report)
        if not any(g.is_file(p) for p in ("/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd")):
            problems.append("no SSH server (sshd) in the guest: the harness cannot log in")
        if problems:
            notes += [f"unbootable: {p}" for p in problems]
            raise UnbootableImage("unbootable here: " + "; ".join(problems))
        notes.append(configure_network(g))
        notes += rewrite_fstab(g, mountpoints)
        notes += fix_boot_config(g, root)
        notes.append(install_key(g, public_key))
    finally:
        g.umount_all()
    g.shutdown()


def configure_network(g: Any) -> str:
    """DHCP on the first NIC with whatever the guest uses for its network."""
    if g.is_dir("/etc/netplan"):
        g.write(
            "/etc/netplan/90-amilab-import.yaml",
            "network:\n  version: 2\n  ethernets:\n    first-nic:\n"
            '      match: {name: "e*"}\n      dhcp4: true\n',
        )
        return "network: netplan, DHCP on e* (/etc/netplan/90-amilab-import.yaml)"
    if _networkd_enabled(g):
        _write_networkd(g)
        return f"network: systemd-networkd, DHCP on en*/eth* ({_NETWORKD_FILE})"
    if any(g.is_file(p) for p in ("/sbin/ifup", "/usr/sbin/ifup")):
        stanzas = "".join(f"allow-hotplug {n}\niface {n} inet dhcp\n\n" for n in FIRST_NIC_NAMES)
        interfaces = "/etc/network/interfaces"
        text = g.cat(interfaces) if g.is_file(interfaces) else ""
        if g.is_dir("/etc/network/interfaces.d") and "interfaces.d" in text:
            g.write("/etc/network/interfaces.d/amilab-import", stanzas)
            return "network: ifupdown, DHCP (/etc/network/interfaces.d/amilab-import)"
        g.write(interfaces, text + "\n# amilab import: DHCP on the first NIC\n" + stanzas)
        return "network: ifupdown, DHCP (appended to /etc/network/interfaces)"
    if g.is_file("/usr/sbin/NetworkManager"):
        return "network: NetworkManager (DHCP on every NIC by default), nothing to change"
    if g.is_dir("/lib/systemd/network") or g.is_file("/lib/systemd/systemd-networkd"):
        _write_networkd(g)
        g.ln_sf(
            "/lib/systemd/system/systemd-networkd.service",
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        )
        return "network: enabled systemd-networkd with DHCP on en*/eth*"
    return "network: no known network configuration system found; nothing changed"


def _networkd_enabled(g: Any) -> bool:
    for wants in g.glob_expand("/etc/systemd/system/*.wants"):
        if g.exists(f"{wants.rstrip('/')}/systemd-networkd.service"):
            return True
    return False


def _write_networkd(g: Any) -> None:
    g.mkdir_p("/etc/systemd/network")
    g.write(_NETWORKD_FILE, "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n")


_DISK_DEV = re.compile(r"^/dev/(?:[shv]d|xvd)([a-z]+)(\d*)$")


def _device_uuid(g: Any, spec: str, mountpoints: dict[str, str], mp: str) -> str | None:
    device = mountpoints.get(mp)
    if device is None:
        m = _DISK_DEV.match(spec)
        if m:
            device = f"/dev/sd{m.group(1)}{m.group(2)}"
    if device is None:
        return None
    try:
        return g.vfs_uuid(device) or None
    except RuntimeError:
        return None


def rewrite_fstab(g: Any, mountpoints: dict[str, str]) -> list[str]:
    """Device names change when the disk becomes virtio (sda → vda): mount by UUID, and let
    the guest boot without a filesystem it cannot find (nofail for all but the root)."""
    if not g.is_file("/etc/fstab"):
        return ["fstab: none"]
    notes = []
    lines = []
    for line in g.cat("/etc/fstab").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) < 4:
            lines.append(line)
            continue
        spec, mp, fstype, options = fields[:4]
        rest = fields[4:]
        new_spec = spec
        if spec.startswith("/dev/") and not spec.startswith("/dev/mapper/"):
            uuid = _device_uuid(g, spec, mountpoints, mp)
            if uuid:
                new_spec = f"UUID={uuid}"
        opts = options.split(",")
        if mp != "/" and "nofail" not in opts:
            opts.append("nofail")
        new = " ".join([new_spec, mp, fstype, ",".join(opts), *rest])
        if new != " ".join(fields):
            notes.append(f"fstab: {' '.join(fields)} -> {new}")
        lines.append(new)
    g.write("/etc/fstab", "\n".join(lines) + "\n")
    return notes or ["fstab: nothing to change"]


_ROOT_ARG = re.compile(r"root=/dev/(?:[shv]d|xvd)[a-z]+\d*")


def fix_boot_config(g: Any, root: str) -> list[str]:
    """A kernel command line naming /dev/sda1 would not find the root on a virtio disk."""
    try:
        uuid = g.vfs_uuid(root)
    except RuntimeError:
        return []
    notes = []
    for path in (
        "/boot/grub/grub.cfg",
        "/boot/grub2/grub.cfg",
        "/boot/grub/menu.lst",
        "/boot/extlinux/extlinux.conf",
        "/etc/default/grub",
    ):
        if not g.is_file(path):
            continue
        text = g.cat(path)
        new = _ROOT_ARG.sub(f"root=UUID={uuid}", text)
        if new != text:
            g.write(path, new)
            notes.append(f"boot: root=UUID={uuid} in {path}")
    return notes


def install_key(g: Any, public_key: str) -> str:
    g.mkdir_p("/root/.ssh")
    g.chmod(0o700, "/root/.ssh")
    path = "/root/.ssh/authorized_keys"
    text = g.cat(path) if g.is_file(path) else ""
    if public_key not in text.splitlines():
        text = (text.rstrip("\n") + "\n" if text.strip() else "") + public_key + "\n"
    g.write(path, text)
    g.chmod(0o600, path)
    g.chown(0, 0, "/root/.ssh")
    g.chown(0, 0, path)
    if g.is_file("/etc/selinux/config") and "SELINUX=enforcing" in g.cat("/etc/selinux/config"):
        g.touch("/.autorelabel")  # new files need their labels before sshd reads them
    return "ssh: key installed in /root/.ssh/authorized_keys"
