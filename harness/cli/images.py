"""The image catalogue: `images` (describe-images), `copy-image`, `deregister`, `tag`,
`untag` and `launch-permission`."""

from __future__ import annotations

import argparse

from builder.images import responses
from builder.images.registry import ImageRecord
from harness.cli.command import add_command
from harness.cli.flags import add_switch
from harness.cli.output import add_json, print_images, print_json, print_result


def _images(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import ImageFilter, describe_images

    flt = ImageFilter(args.owner, args.name, args.tag, args.executable_by, args.image_id)
    records = describe_images(args.type, flt)
    if args.json:
        print_json({"Images": [r.describe() for r in records]})
    else:
        print_images(records)
    return 0


def register_images(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "images", _images, "describe the registry (AMIs, AKIs, ARIs)")
    p.add_argument("--type", choices=("machine", "kernel", "ramdisk"))
    add_json(p, "print describe-images JSON")
    # describe-images --owners/--executable-users/--filters; each may be repeated
    p.add_argument("--owner", action="append", default=[], help="account ID or 'self'")
    p.add_argument("--name", action="append", default=[], help="name pattern (* and ?)")
    p.add_argument("--tag", action="append", default=[], help="KEY=PATTERN, or KEY alone")
    p.add_argument(
        "--executable-by", action="append", default=[], help="account ID, 'self' or 'all'"
    )
    p.add_argument("--image-id", action="append", default=[], metavar="IMAGE_ID")


def _copy_image(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import copy_image

    rec = copy_image(
        args.source, args.name, description=args.description, copy_tags=args.copy_image_tags
    )
    return print_result(args, {"ImageId": rec.image_id}, [rec.image_id])


def register_copy_image(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "copy-image", _copy_image, "copy an AMI under a new ID and name")
    p.add_argument("source", metavar="SOURCE_IMAGE_ID")
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    add_switch(p, "--copy-image-tags", "copy its tags too")
    add_json(p)


def _deregister(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import deregister

    gone = [deregister(ref, force=args.force).image_id for ref in args.image]
    return print_result(args, responses.deregistered(gone), gone)


def register_deregister(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "deregister", _deregister, "deregister images (refused while others use them)"
    )
    p.add_argument("image", nargs="+", metavar="IMAGE_ID")
    add_switch(p, "--force", "even if registered AMIs use it")
    add_json(p)


def _print_tags(args: argparse.Namespace, records: list[ImageRecord]) -> int:
    return print_result(args, responses.image_tags(records), [r.image_id for r in records])


def _tag(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import parse_tags, tag

    return _print_tags(args, tag([args.image], parse_tags(args.tags)))


def _untag(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import untag

    return _print_tags(args, untag([args.image], args.tags))


def register_tag(sub: argparse._SubParsersAction) -> None:
    for name, func, help, metavar in (
        ("tag", _tag, "add or change an image's tags", "KEY=VALUE"),
        ("untag", _untag, "remove tags (KEY, or KEY=VALUE only with that value)", "KEY[=VALUE]"),
    ):
        p = sub.add_parser(name, help=help)
        p.add_argument("image", metavar="IMAGE_ID")
        p.add_argument("tags", nargs="+", metavar=metavar)
        add_json(p)
        p.set_defaults(func=func)


def _launch_permission(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import set_launch_permission

    rec = set_launch_permission(
        args.image, add=args.add, remove=args.remove, public=args.public, reset=args.reset
    )
    return print_result(args, responses.launch_permission(rec), [rec.image_id])


def register_launch_permission(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "launch-permission", _launch_permission, "who may launch an image (accounts, public)"
    )
    p.add_argument("image", metavar="IMAGE_ID")
    p.add_argument("--add", action="append", default=[], metavar="ACCOUNT_ID")
    p.add_argument("--remove", action="append", default=[], metavar="ACCOUNT_ID")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--public", dest="public", action="store_true", default=None)
    g.add_argument("--private", dest="public", action="store_false")
    add_switch(p, "--reset", "private, no accounts (before the rest)")
    add_json(p)
