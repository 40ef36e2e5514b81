"""`add-modules`: a new AMI whose disk also holds another kernel's modules; `modules check`:
the static verdict of an image's out-of-tree modules on kernels."""

from __future__ import annotations

import argparse

from harness.cli.command import add_command
from harness.cli.flags import add_image_json, add_switch, print_image
from harness.cli.output import add_json


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
        "register a new AMI whose disk also holds a kernel's modules (depmod run for it) "
        "and the image's out-of-tree modules rebuilt for it",
    )
    p.add_argument("image", metavar="AMI")
    p.add_argument("--kernel", required=True, metavar="AKI", help="the kernel whose modules")
    add_switch(p, "--default-kernel", "boot the new AMI with that kernel (and a ramdisk "
               "generated for it): a paravirtual image's AKI, an hvm image's first GRUB entry "
               "(kernel and initrd in /boot)")  # fmt: skip
    p.add_argument("--name", help="the new AMI's name (default: <source name>-<release>)")
    add_image_json(p, "the new image")


def _check(args: argparse.Namespace) -> int:
    from builder.modules.check import check_image
    from builder.progress import out as console
    from harness.cli.output import print_json, print_module_cells

    say = None if args.json else (lambda line: console.print(f"[dim]{line}[/]"))
    cells = check_image(args.image, args.kernel or [], say=say)
    if args.json:
        print_json({"ImageId": args.image, "Cells": [c.to_json() for c in cells]})
    else:
        print_module_cells([c.to_json() for c in cells])
    # as smoke: 1 when a module would not load (needs-rebuild included)
    return 0 if all(c.verdict.loads for c in cells) else 1


def register_modules(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("modules", help="out-of-tree modules of an image against kernels")
    modules_sub = p.add_subparsers(dest="modules_command", required=True)
    c = add_command(
        modules_sub,
        "check",
        _check,
        "static verdict of each out-of-tree module on each kernel (vermagic, symbol CRCs, "
        "GPL-only exports, namespaces), without booting",
    )
    c.add_argument("image", metavar="AMI")
    c.add_argument(
        "--kernel",
        action="append",
        metavar="K",
        help="an AKI ID or name, or a catalogue kernel (fetched on first use); repeat for "
        "several; default: the image's own kernel",
    )
    add_json(c, "one object per module and kernel: Module, BuiltFor, KernelRelease, Class, "
             "Evidence, Notes")  # fmt: skip
