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
