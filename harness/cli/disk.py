"""Disks from elsewhere: `convert` (validate and convert), `inspect` (what a disk holds) and
`import` (a VMDK/OVA/disk into a registered AMI)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.output import add_json, print_import, print_inspection, print_json

# the format table's choices (builder.disk.formats) once it names them per command
CONVERT_FORMATS = ("raw", "qcow2", "vmdk")
VMDK_SUBFORMATS = ("monolithicSparse", "streamOptimized")


def _convert(args: argparse.Namespace) -> int:
    from builder.disk.convert import convert

    result = convert(
        Path(args.src), Path(args.dst), args.format, args.subformat, workers=args.workers
    )
    if args.json:
        print_json(result.describe())
    else:
        print(
            f"{result.output}: {result.format}"
            f"{' ' + result.subformat if result.subformat else ''}, "
            f"{result.output_bytes} bytes, {result.seconds:.1f} s"
        )
    return 0


def register_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="validate a VMDK/OVA/OVF/qcow2/raw disk and convert it",
        description="Validate SRC (VMDK, OVA, OVF, qcow2 or raw), then write it to DST.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", default="raw", choices=CONVERT_FORMATS)
    p.add_argument(
        "--subformat", choices=VMDK_SUBFORMATS, help="VMDK subformat (default monolithicSparse)"
    )
    p.add_argument("--workers", type=int, help="compression threads (default: all cores)")
    add_json(p)
    p.set_defaults(func=_convert)


def _inspect(args: argparse.Namespace) -> int:
    from builder.disk.inspection import inspect_disk

    report = inspect_disk(Path(args.disk))
    if args.json:
        print_json(report)
    else:
        print_inspection(report)
    return 0


def register_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="what a disk holds: partitions, filesystems, OS, bootloader, kernels (read-only)",
    )
    p.add_argument("disk")
    add_json(p)
    p.set_defaults(func=_inspect)


def _import(args: argparse.Namespace) -> int:
    from builder.images.importer import import_disk

    record = import_disk(Path(args.src), name=args.name, quiet=args.json)
    if args.json:
        print_json({"Images": [record.describe()]})
    else:
        print_import(record)
    return 0


def register_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="validate, convert, inspect and register a disk as an AMI")
    p.add_argument("src")
    p.add_argument("--name", help="image name (default: the OVF's or the file's name)")
    add_json(p, "print describe-images JSON")
    p.set_defaults(func=_import)
