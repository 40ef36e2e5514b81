"""`build` and `kernels`: recipes into registered AKI, ARI and AMI, and the kernel catalogue."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.build.recipe import keys_help
from harness.cli.output import add_json, kernel_rows, print_builds, print_json, print_kernels


def _build(args: argparse.Namespace) -> int:
    from builder.build.pipeline import build_file

    results = build_file(Path(args.recipe_file), image=args.image, quiet=args.json)
    if args.json:
        print_json({"Images": [r.describe() for r in results]})
    else:
        print_builds(results)
    return 0


def _kernels(args: argparse.Namespace) -> int:
    from builder.build.kernel import load_catalogue

    rows = kernel_rows(list(load_catalogue().values()))
    if args.json:
        print_json({"Kernels": rows})
    else:
        print_kernels(rows)
    return 0


def register_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build recipes and register their AKI, ARI and AMI",
        description="Build the images a recipe file defines and register them.",
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe_file", nargs="?", default="build.yaml", help="default: build.yaml")
    p.add_argument("--image", help="build only the recipe with this name")
    add_json(p, "print describe-images JSON")
    p.set_defaults(func=_build)


def register_kernels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="the kernel catalogue (kernels/*.yaml)")
    add_json(p)
    p.set_defaults(func=_kernels)
