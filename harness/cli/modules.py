"""`add-modules`: a new AMI whose disk also holds another kernel's modules."""

from __future__ import annotations

import argparse

from harness.cli.command import add_command
from harness.cli.flags import add_image_json, add_switch, print_image


def _add_modules(args: argparse.Namespace) -> int:
    from builder.images.modules import add_modules

    rec = add_modules(
        args.image, args.kernel, default_kernel=args.default_kernel, name=args.name
    )
    return print_image(args, rec)


def register_add_modules(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "add-modules",
        _add_modules,
        "register a new AMI whose disk also holds a kernel's modules (depmod run for it)",
    )
    p.add_argument("image", metavar="AMI")
    p.add_argument("--kernel", required=True, metavar="AKI", help="the kernel whose modules")
    add_switch(p, "--default-kernel", "boot the new AMI with that kernel (and a ramdisk "
               "generated for it): a paravirtual image's AKI, an hvm image's first GRUB entry "
               "(kernel and initrd in /boot)")  # fmt: skip
    p.add_argument("--name", help="the new AMI's name (default: <source name>-<release>)")
    add_image_json(p, "the new image")
