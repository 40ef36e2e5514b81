"""One object per AMI in a directory or S3 bucket: `store`, `store-tasks` and `restore`."""

from __future__ import annotations

import argparse

from harness.cli.command import add_command
from harness.cli.flags import add_switch
from harness.cli.output import add_json, print_result

_BUCKET_HELP = "DIR or s3://BUCKET[/PATH]"
_ENDPOINT_HELP = "S3 endpoint (default: boto3's configuration)"


def _store(args: argparse.Namespace) -> int:
    from builder.images.store import store_image

    t = store_image(
        args.image, args.bucket, endpoint_url=args.endpoint_url, with_kernel=args.with_kernel
    )
    return print_result(args, t.describe_stored(), [t.object_key])


def register_store(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "store", _store, "store an AMI as one object <ami-id>.bin (dir or s3://)")
    p.add_argument("image", metavar="AMI_ID")
    p.add_argument("--bucket", required=True, help=_BUCKET_HELP)
    p.add_argument("--endpoint-url", help=_ENDPOINT_HELP)
    add_switch(p, "--with-kernel", "include its AKI and ARI")
    add_json(p)


def _store_tasks(args: argparse.Namespace) -> int:
    from builder.images.store_tasks import TaskLog

    tasks = [t for t in TaskLog().recent() if not args.image or t.image_id in args.image]
    lines = [
        f"{t.image_id} {t.state} {t.progress}% {t.bucket}/{t.object_key}"
        + (f" ({t.failure_reason})" if t.failure_reason else "")
        for t in tasks
    ]
    return print_result(args, {"StoreImageTaskResults": [t.describe() for t in tasks]}, lines)


def register_store_tasks(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "store-tasks", _store_tasks, "store tasks of the last 31 days and their progress"
    )
    p.add_argument("--image", action="append", metavar="AMI_ID", help="only these images")
    add_json(p)


def _restore(args: argparse.Namespace) -> int:
    from builder.images.store import restore_image

    r = restore_image(args.bucket, args.object_key, name=args.name, endpoint_url=args.endpoint_url)
    return print_result(args, r.describe(), [r.image.image_id])


def register_restore(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "restore", _restore, "register a stored <ami-id>.bin under a new ID")
    p.add_argument("--bucket", required=True, help=_BUCKET_HELP)
    p.add_argument("--object-key", required=True)
    p.add_argument("--name", help="default: the stored image's name (must be free)")
    p.add_argument("--endpoint-url", help=_ENDPOINT_HELP)
    add_json(p)
