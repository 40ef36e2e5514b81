"""Disks from elsewhere: `convert` (validate and convert), `inspect` (what a disk holds) and
`import` (a VMDK/OVA/disk into a registered AMI)."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.disk.convert import SOURCE_FORMATS
from builder.disk.formats import VMDK_SUBFORMATS, format_names
from harness.cli.command import add_command
from harness.cli.output import add_json, print_import, print_inspection, show


def _convert(args: argparse.Namespace) -> int:
    from builder.disk.convert import convert

    result = convert(
        Path(args.src), Path(args.dst), args.format, args.subformat, workers=args.workers,
        source_format=args.source_format,
    )  # fmt: skip
    line = (
        f"{result.output}: {result.format}{' ' + result.subformat if result.subformat else ''}"
        f", {result.output_bytes} bytes, {result.seconds:.1f} s"
    )
    return show(args, result.describe(), lambda: print(line))


def register_convert(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "convert", _convert, "validate a VMDK/OVA/OVF/qcow2/raw disk and convert it",
        description="Validate SRC (VMDK, OVA, OVF, qcow2 or raw), then write it to DST.",
    )  # fmt: skip
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", default="raw", choices=format_names("convert"))
    p.add_argument(
        "--subformat", choices=VMDK_SUBFORMATS, help="VMDK subformat (default monolithicSparse)"
    )
    p.add_argument(
        "--source-format",
        choices=SOURCE_FORMATS,
        help="read SRC as this format, whatever its name says (raw: a file not named .raw/.img)",
    )
    p.add_argument("--workers", type=int, help="compression threads (default: all cores)")
    add_json(p)


def _inspect(args: argparse.Namespace) -> int:
    from builder.disk.inspection import inspect_disk

    report = inspect_disk(Path(args.disk), source_format=args.source_format)
    return show(args, report, lambda: print_inspection(report))


def register_inspect(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "inspect", _inspect,
        "what a disk holds: partitions, filesystems, OS, bootloader, kernels (read-only)",
    )  # fmt: skip
    p.add_argument("disk")
    p.add_argument(
        "--source-format",
        choices=SOURCE_FORMATS,
        help="read DISK as this format, whatever its name says (raw: a file not named .raw/.img)",
    )
    add_json(p)


def _import(args: argparse.Namespace) -> int:
    from builder.images.importer import import_disk

    record = import_disk(Path(args.src), name=args.name, quiet=args.json)
    return show(args, {"Images": [record.describe()]}, lambda: print_import(record))


def register_import(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "import", _import, "validate, convert, inspect and register a disk as an AMI"
    )
    p.add_argument("src")
    p.add_argument("--name", help="image name (default: the OVF's or the file's name)")
    add_json(p, "print describe-images JSON")
