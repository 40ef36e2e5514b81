"""EBS volumes (create, attach, detach, describe, delete) and snapshots (create,
describe, copy, delete)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from harness.cli.command import add_command
from harness.cli.flags import add_switch, add_tags
from harness.cli.output import add_json, print_result


def _create_volume(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import parse_tags
    from builder.images.volumes import create_volume, public

    vol = create_volume(args.size, args.snapshot_id, args.availability_zone, args.volume_type,
                        parse_tags(args.tag))  # fmt: skip
    return print_result(args, public(vol), [vol["VolumeId"]])


def _attach_volume(args: argparse.Namespace) -> int:
    from harness.instances.operations.attachments import attach_volume

    att = attach_volume(args.volume_id, args.instance_id, args.device)
    return print_result(args, att, [f"{att['VolumeId']}\t{att['State']}"])


def _detach_volume(args: argparse.Namespace) -> int:
    from harness.instances.operations.attachments import detach_volume

    att = detach_volume(args.volume_id, args.instance_id, force=args.force)
    return print_result(args, att, [f"{att['VolumeId']}\t{att['State']}"])


def _describe_volumes(args: argparse.Namespace) -> int:
    from builder.images.volumes import describe_volumes

    rows = describe_volumes(args.volume_ids)
    lines = [f"{v['VolumeId']}\t{v['State']}\t{v['Size']}\t{v['SnapshotId'] or '-'}\t"
             + ",".join(a["InstanceId"] for a in v["Attachments"]) for v in rows]  # fmt: skip
    return print_result(args, {"Volumes": rows}, lines)


def _delete_volume(args: argparse.Namespace) -> int:
    from builder.images.volumes import delete_volume

    delete_volume(args.volume_id)
    return print_result(args, {"Return": True}, [])


def _create_snapshot(args: argparse.Namespace) -> int:
    from builder.images.volumes import create_snapshot, public

    snap = create_snapshot(args.volume_id, args.description or "")
    return print_result(args, public(snap), [snap["SnapshotId"]])


def _describe_snapshots(args: argparse.Namespace) -> int:
    from builder.images.volumes import describe_snapshots

    rows = describe_snapshots(args.snapshot_ids)
    lines = [f"{s['SnapshotId']}\t{s['State']}\t{s['VolumeId']}\t{s['VolumeSize']}" for s in rows]
    return print_result(args, {"Snapshots": rows}, lines)


def _copy_snapshot(args: argparse.Namespace) -> int:
    from builder.images.volumes import copy_snapshot

    snap = copy_snapshot(args.source_snapshot_id, args.description)
    return print_result(args, {"SnapshotId": snap["SnapshotId"]}, [snap["SnapshotId"]])


def _delete_snapshot(args: argparse.Namespace) -> int:
    from builder.images.volumes import delete_snapshot

    delete_snapshot(args.snapshot_id)
    return print_result(args, {"Return": True}, [])


_REQUIRED: dict[str, Any] = {"required": True}
# the volume and snapshot commands that take only IDs (and a description): command, function,
# help, {argument: argparse's keywords}
_ID_COMMANDS: tuple[tuple[str, Callable[[argparse.Namespace], int], str, dict], ...] = (
    ("describe-volumes", _describe_volumes, "list volumes",
     {"volume_ids": {"nargs": "*", "metavar": "VOLUME_ID"}}),
    ("delete-volume", _delete_volume, "delete an available volume", {"--volume-id": _REQUIRED}),
    ("create-snapshot", _create_snapshot, "an immutable copy of a volume",
     {"--volume-id": _REQUIRED, "--description": {}}),
    ("describe-snapshots", _describe_snapshots, "list snapshots",
     {"snapshot_ids": {"nargs": "*", "metavar": "SNAPSHOT_ID"}}),
    ("copy-snapshot", _copy_snapshot, "a snapshot under a new ID",
     {"--source-snapshot-id": _REQUIRED, "--description": {}}),
    ("delete-snapshot", _delete_snapshot,
     "delete a snapshot (refused while a registered image uses it)",
     {"--snapshot-id": _REQUIRED}),
)  # fmt: skip


def register_volumes(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "create-volume", _create_volume, "an EBS volume: empty or from a snapshot")
    p.add_argument("--size", type=int, metavar="GiB")
    p.add_argument("--snapshot-id")
    p.add_argument("--availability-zone", default="us-east-1a")
    p.add_argument("--volume-type", default="gp2")
    add_tags(p)
    add_json(p)
    p = add_command(sub, "attach-volume", _attach_volume,
                    "attach a volume (to a running instance by hot-plug)")  # fmt: skip
    p.add_argument("--volume-id", required=True)
    p.add_argument("--instance-id", required=True)
    p.add_argument("--device", required=True, metavar="/dev/sdX")
    add_json(p)
    p = add_command(sub, "detach-volume", _detach_volume,
                    "detach a volume (a running guest lets go of it first)")  # fmt: skip
    p.add_argument("--volume-id", required=True)
    p.add_argument("--instance-id")
    add_switch(p, "--force", "end the attachment even if the guest does not let go")
    add_json(p)
    for name, func, help, arguments in _ID_COMMANDS:
        p = add_command(sub, name, func, help)
        for argument, kw in arguments.items():
            p.add_argument(argument, **kw)
        add_json(p)

