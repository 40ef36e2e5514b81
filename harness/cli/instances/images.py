"""create-image: an AMI from an instance's volumes."""

from __future__ import annotations

import argparse

from harness.cli.command import add_command
from harness.cli.flags import add_instance_id, add_no_reboot
from harness.cli.output import add_json, print_result


def _create_image(args: argparse.Namespace) -> int:
    from harness.instances.operations.images import create_image

    rec = create_image(args.instance_id, args.name, args.no_reboot, args.description or "")
    return print_result(args, {"ImageId": rec.image_id}, [rec.image_id])


def register_create_image(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "create-image",
        _create_image,
        "an AMI from an instance: its volumes snapshotted, the AMI refers to them",
    )
    add_instance_id(p)
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    add_no_reboot(p, "snapshot the running instance without stopping it first")
    add_json(p)
