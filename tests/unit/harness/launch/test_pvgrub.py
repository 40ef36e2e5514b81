"""PV-GRUB menu parsing (GRUB legacy menu.lst and GRUB 2 grub.cfg) and bzImage releases."""

from __future__ import annotations

import pytest

from builder.build import bootloader
from harness.launch.pvgrub import kernel_release, parse_grub_cfg, parse_menu_lst

MENU_LST = """\
# comment
default 1
timeout 5

title Old kernel
root (hd0)
kernel /boot/vmlinuz-5.10 root=LABEL=x ro
initrd /boot/initrd.img-5.10

title Debian 6.1
root (hd0,0)
kernel (hd0,0)/boot/vmlinuz-6.1.0-9 root=UUID=abc ro console=hvc0
initrd /boot/initrd.img-6.1.0-9
"""

GRUB_CFG = """\
set default="1"
menuentry 'first' --class debian {
    insmod ext2
    linux /boot/vmlinuz-a root=UUID=1 ro
}
submenu 'Advanced' {
    menuentry 'nested' { linux /boot/nested }
}
menuentry "second" {
    linux   /vmlinuz-b root=/dev/vda1 quiet
    initrd  /initrd-b
}
"""


def test_menu_lst_default_entry() -> None:
    e = parse_menu_lst(MENU_LST)
    assert (e.title, e.kernel, e.initrd) == (
        "Debian 6.1",
        "/boot/vmlinuz-6.1.0-9",
        "/boot/initrd.img-6.1.0-9",
    )
    assert e.args == "root=UUID=abc ro console=hvc0"
    assert e.partition == 1


def test_menu_lst_without_kernel_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_menu_lst("default 0\ntitle nothing\nroot (hd0)\n")


def test_grub_cfg_numeric_default_skips_submenu_contents() -> None:
    e = parse_grub_cfg(GRUB_CFG)
    assert (e.title, e.kernel, e.initrd, e.args) == (
        "second",
        "/vmlinuz-b",
        "/initrd-b",
        "root=/dev/vda1 quiet",
    )


def test_grub_cfg_default_by_title() -> None:
    e = parse_grub_cfg(GRUB_CFG.replace('set default="1"', "set default=first"))
    assert e.kernel == "/boot/vmlinuz-a" and e.initrd is None


def test_amilab_written_menus_parse_back() -> None:
    args = bootloader.kernel_args("u-u-i-d", "console=ttyS0", "quiet")
    lst = parse_menu_lst(bootloader.menu_lst("6.1.0-1-cloud-amd64", args, True, 3))
    cfg = parse_grub_cfg(bootloader.grub_cfg("6.1.0-1-cloud-amd64", args, True))
    for e in (lst, cfg):
        assert e.kernel == "/boot/vmlinuz-6.1.0-1-cloud-amd64"
        assert e.initrd == "/boot/initrd.img-6.1.0-1-cloud-amd64"
        assert e.args == "root=UUID=u-u-i-d ro console=ttyS0 quiet"
    assert lst.partition == 3


def test_kernel_release_from_setup_header() -> None:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x300).to_bytes(2, "little")
    image[0x500:0x520] = b"6.1.0-99-cloud-amd64 (x) #1 SMP\0"
    assert kernel_release(bytes(image)) == "6.1.0-99-cloud-amd64"
    assert kernel_release(b"not a kernel") is None
