"""The `amilab` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from builder.errors import AmilabError
from builder.recipe import keys_help


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _cmd_build(args: argparse.Namespace) -> int:
    from builder.build import build_file, report_builds

    results = build_file(Path(args.recipe_file), image=args.image, quiet=args.json)
    if args.json:
        _print_json({"Images": [r.describe() for r in results]})
    else:
        report_builds(results)
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    from builder.registry import Registry
    from builder.report import print_images

    records = Registry().list(args.type)
    if args.json:
        _print_json({"Images": [r.describe() for r in records]})
    else:
        print_images(records)
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    from builder.kernel import load_catalogue
    from builder.report import kernel_rows, print_kernels

    rows = kernel_rows(list(load_catalogue().values()))
    if args.json:
        _print_json({"Kernels": rows})
    else:
        print_kernels(rows)
    return 0


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build recipes and register their AKI, ARI and AMI",
        description="Build the images a recipe file defines and register them.",
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe_file", nargs="?", default="build.yaml", help="default: build.yaml")
    p.add_argument("--image", help="build only the recipe with this name")
    p.add_argument("--json", action="store_true", help="print describe-images JSON")
    p.set_defaults(func=_cmd_build)


def _add_images(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("images", help="describe the registry (AMIs, AKIs, ARIs)")
    p.add_argument("--type", choices=("machine", "kernel", "ramdisk"))
    p.add_argument("--json", action="store_true", help="print describe-images JSON")
    p.set_defaults(func=_cmd_images)


def _add_kernels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="the kernel catalogue (kernels/*.yaml)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_kernels)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.convert import convert

        result = convert(
            Path(args.src), Path(args.dst), args.format, args.subformat, workers=args.workers
        )
        if args.json:
            _print_json(result.describe())
        else:
            print(
                f"{result.output}: {result.format}"
                f"{' ' + result.subformat if result.subformat else ''}, "
                f"{result.output_bytes} bytes, {result.seconds:.1f} s"
            )
        return 0

    p = sub.add_parser(
        "convert",
        help="validate a VMDK/OVA/OVF/qcow2/raw disk and convert it",
        description="Validate SRC (VMDK, OVA, OVF, qcow2 or raw), then write it to DST.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", default="raw", choices=("raw", "qcow2", "vmdk"))
    p.add_argument(
        "--subformat",
        choices=("monolithicSparse", "streamOptimized"),
        help="VMDK subformat (default monolithicSparse)",
    )
    p.add_argument("--workers", type=int, help="compression threads (default: all cores)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.inspect import inspect_disk, print_inspection

        report = inspect_disk(Path(args.disk))
        if args.json:
            _print_json(report)
        else:
            print_inspection(report)
        return 0

    p = sub.add_parser(
        "inspect",
        help="what a disk holds: partitions, filesystems, OS, bootloader, kernels (read-only)",
    )
    p.add_argument("disk")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_import(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.importer import import_disk, report_import

        record = import_disk(Path(args.src), name=args.name, quiet=args.json)
        if args.json:
            _print_json({"Images": [record.describe()]})
        else:
            report_import(record)
        return 0

    p = sub.add_parser("import", help="validate, convert, inspect and register a disk as an AMI")
    p.add_argument("src")
    p.add_argument("--name", help="image name (default: the OVF's or the file's name)")
    p.add_argument("--json", action="store_true", help="print describe-images JSON")
    p.set_defaults(func=run)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 as well
        self.exit(2, f"amilab: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="amilab",
        description="Bake VM images from YAML recipes and boot them under QEMU as EC2 did AMIs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_build(sub)
    _add_images(sub)
    _add_kernels(sub)
    _add_convert(sub)
    _add_inspect(sub)
    _add_import(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AmilabError as e:
        print(f"amilab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("amilab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
