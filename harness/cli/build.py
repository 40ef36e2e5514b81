"""`build` and `kernels`: recipes into registered AKI, ARI and AMI, and the kernel catalogue."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.build.recipe import keys_help
from builder.images import responses
from harness.cli.command import add_command
from harness.cli.output import add_json, print_builds, print_kernels, show


def _build(args: argparse.Namespace) -> int:
    from builder.build.pipeline import build_file

    results = build_file(Path(args.recipe_file), image=args.image, quiet=args.json)
    return show(args, {"Images": [r.describe() for r in results]}, lambda: print_builds(results))


def _kernels(args: argparse.Namespace) -> int:
    from builder.build.kernel import load_catalogue, resolve_versions
    from builder.images.registry import Registry

    definitions = list(load_catalogue().values())
    resolved = resolve_versions(definitions)  # the indexes only: no kernel is downloaded
    payload = responses.kernel_catalogue(definitions, Registry().list("kernel"), resolved)
    return show(args, payload, lambda: print_kernels(payload["Kernels"]))


def register_build(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "build", _build, "build recipes and register their AKI, ARI and AMI",
        description="Build the images a recipe file defines and register them.",
        epilog=keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("recipe_file", nargs="?", default="build.yaml", help="default: build.yaml")
    p.add_argument("--image", help="build only the recipe with this name")
    add_json(p, "print describe-images JSON")


def register_kernels(sub: argparse._SubParsersAction) -> None:
    add_json(add_command(sub, "kernels", _kernels, "the kernel catalogue (kernels/*.yaml)"))
