"""`register-kernel`: an AKI from a kernel build's files or from Debian kernel packages."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.errors import BadInput
from harness.cli.command import add_command
from harness.cli.flags import add_image_json, print_image


def _register_kernel(args: argparse.Namespace) -> int:
    from builder.build import own_kernel
    from builder.modules import own_headers

    if args.deb and (args.vmlinuz or args.modules or args.config):
        raise BadInput("--deb takes the kernel, modules and config from the packages alone")
    if not args.deb and not args.vmlinuz:
        raise BadInput("register-kernel needs --vmlinuz FILE or --deb FILE")
    headers = Path(args.headers) if args.headers else None
    if headers is not None:  # checked before anything is stored
        own_headers.check_tree(headers, None)
    if args.deb:
        stored = own_kernel.store_debs([Path(d) for d in args.deb])
    else:
        stored = own_kernel.store_files(
            Path(args.vmlinuz),
            Path(args.modules) if args.modules else None,
            Path(args.config) if args.config else None,
        )
    kept = own_headers.store_tree(headers, stored.release) if headers else None
    rec = own_kernel.register(stored, args.name, headers=kept)
    return print_image(args, rec)


def register_register_kernel(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "register-kernel",
        _register_kernel,
        "register an AKI from a bzImage and its modules, or from Debian kernel packages",
    )
    p.add_argument("--vmlinuz", metavar="FILE", help="the kernel (a bzImage, e.g. "
                   "arch/x86/boot/bzImage); its release is read from its header")  # fmt: skip
    p.add_argument(
        "--modules",
        metavar="DIR_OR_TARBALL",
        help="its modules: X from `make modules_install INSTALL_MOD_PATH=X`, a folder named "
        "<release>, or a tarball of either; named for the same release as the kernel",
    )
    p.add_argument("--config", metavar="FILE", help="the kernel's .config")
    p.add_argument(
        "--deb",
        metavar="FILE",
        action="append",
        help="a Debian kernel package (linux-image-<release>); repeat it for a split "
        "kernel's linux-image, linux-binary, linux-modules and linux-base packages",
    )
    p.add_argument("--headers", metavar="DIR", help="its build tree (Module.symvers, .config, "
                   "Makefile): out-of-tree modules' static verdict and add-modules' rebuild for "
                   "it")  # fmt: skip
    p.add_argument("--name", help="the AKI's name (default: kernel-<release>)")
    add_image_json(p, "the AKI")
