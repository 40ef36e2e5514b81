"""`build` and `kernels`: recipes into registered AKI, ARI and AMI, and the kernel catalogue."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.build.recipe import keys_help
from builder.images import responses
from harness.cli.command import add_command
from harness.cli.flags import add_switch
from harness.cli.output import add_json, print_builds, print_kernels, print_verdicts, show


def _build(args: argparse.Namespace) -> int:
    if args.verify:
        return _verify(args)
    from builder.build.pipeline import build_all

    built = build_all(Path(args.recipe_file), image=args.image, quiet=args.json)
    payload = {"Images": [{**b.image.describe(), "Cached": b.cached} for b in built]}
    return show(args, payload, lambda: print_builds([b.image for b in built]))


def _verify(args: argparse.Namespace) -> int:
    """Build twice, register nothing; exit 1 when the disks differ, saying where."""
    from builder.build.verify import verify_file

    verdicts = verify_file(Path(args.recipe_file), image=args.image, quiet=args.json)
    show(args, {"Verify": [v.describe() for v in verdicts]}, lambda: print_verdicts(verdicts))
    return 0 if all(v.reproducible for v in verdicts) else 1


def _kernels(args: argparse.Namespace) -> int:
    from builder.build.kernel import resolve_versions
    from builder.build.kernel_catalogue import load_catalogue
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
    add_switch(p, "--verify", "build twice without registering; exit 1 naming what differs "
               "when the disks do")  # fmt: skip
    add_json(p, "print describe-images JSON")


def register_kernels(sub: argparse._SubParsersAction) -> None:
    add_json(add_command(sub, "kernels", _kernels, "the kernel catalogue (kernels/*.yaml)"))
