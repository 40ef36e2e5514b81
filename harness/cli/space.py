"""`amilab df` and `amilab prune`: the space amilab uses, and reclaiming it."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from builder.errors import BadInput
from builder.progress import show_table
from builder.state import prune, space
from builder.state.diskfull import human
from harness.cli.command import add_command
from harness.cli.output import add_json, show


def register_df(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "df", _df, "the space used by images, snapshots, volumes, caches, logs")
    add_json(p, "print {Space: [{Type, Count, SizeBytes, ReclaimableBytes}], TotalBytes, ...}")


def register_prune(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "prune", _prune, "remove what no record references, old base trees, old logs"
    )
    days = prune.LOGS_OLDER_THAN_DAYS
    p.add_argument("--yes", action="store_true", help="remove; without it only show what would go")
    p.add_argument("--keep-cache", metavar="SIZE", help="also remove the least recently used "
                   "cache entries over SIZE (10G, 0)")  # fmt: skip
    p.add_argument("--logs-older-than", metavar="DAYS", type=float, default=days,
                   help=f"ended instances' logs older than DAYS go (default {days:g})")  # fmt: skip
    add_json(p, "print {DryRun, Items: [{Type, Path, SizeBytes, Reason}], SpaceReclaimed}")


def _df(args: argparse.Namespace) -> int:
    usage = space.disk_usage()
    return show(args, usage, lambda: _print_df(usage))


def _print_df(usage: dict[str, Any]) -> None:
    table = Table("TYPE", "COUNT", "SIZE", "RECLAIMABLE", box=None)
    for row in usage["Space"]:
        table.add_row(row["Type"], str(row["Count"]), human(row["SizeBytes"]),
                      human(row["ReclaimableBytes"]))  # fmt: skip
    table.add_row("Total", "", human(usage["TotalBytes"]), human(usage["ReclaimableBytes"]))
    show_table(table)
    for fs in usage["Filesystems"]:
        print(f"{fs['MountPoint']}: {human(fs['AvailableBytes'])} free of {human(fs['SizeBytes'])}")


def _prune(args: argparse.Namespace) -> int:
    keep = None
    if args.keep_cache is not None:
        try:
            keep = prune.parse_size(args.keep_cache)
        except ValueError:
            msg = f"--keep-cache {args.keep_cache!r}: a size such as 10G, 512M or 0"
            raise BadInput(msg) from None
    if args.logs_older_than < 0:
        raise BadInput(f"--logs-older-than {args.logs_older_than:g}: days must be 0 or more")
    plan = prune.plan(keep_cache=keep, logs_older_than=args.logs_older_than)
    reclaimed = prune.remove(plan) if args.yes else 0
    payload = {
        "DryRun": not args.yes,
        "Items": [i.shape() for i in plan.items],
        "SpaceReclaimed": reclaimed if args.yes else plan.size,
    }
    return show(args, payload, lambda: _print_prune(payload))


def _print_prune(payload: dict[str, Any]) -> None:
    verb = "would remove" if payload["DryRun"] else "removed"
    for item in payload["Items"]:
        print(f"{verb} {item['Path']} ({human(item['SizeBytes'])}): {item['Reason']}")
    total = human(payload["SpaceReclaimed"])
    if payload["DryRun"]:
        print(f"Total reclaimable space: {total} (run with --yes to remove)")
    else:
        print(f"Total reclaimed space: {total}")
