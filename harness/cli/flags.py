"""Options declared once for the commands that share them: the launch settings, for every
command that launches, and the small groups below (instance IDs, tags, --no-reboot, …).

The settings and their flags are declared once, as the fields of
`harness.launch.request.LaunchRequest`; this module only turns those declarations into
argparse options (`add_launch_arguments`) and parsed options into a request
(`launch_request`). A command that launches one instance (boot) takes a repeatable setting
(`--kernel`) once.
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from builder.images.records import ImageRecord
from harness.cli.output import add_json, print_result
from harness.launch.request import LaunchRequest, launch_settings

R = TypeVar("R", bound=LaunchRequest)


def add_launch_arguments(p: argparse.ArgumentParser, *, single: bool = False) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, flag, default in launch_settings():
        where: Any = p
        if flag.group:
            where = groups.setdefault(flag.group, p.add_argument_group(flag.group))
        kw: dict[str, Any] = {"dest": name, "help": flag.help, "metavar": flag.metavar}
        if isinstance(default, bool):
            kw = {"dest": name, "help": flag.help, "action": "store_true"}
        elif isinstance(default, list) and single and flag.single_help:
            kw["help"] = flag.single_help
        elif isinstance(default, list):
            kw.update(action="append", default=[])
        else:
            kw.update(default=default, choices=flag.choices, type=flag.parse)
        where.add_argument(flag.option, **kw)


def launch_request(cls: type[R], args: argparse.Namespace, **own: Any) -> R:
    """`cls` (LaunchRequest or a command's subclass) from the parsed launch options and the
    command's own fields; EC2's limits on the metadata settings are checked here."""
    values: dict[str, Any] = {}
    for name, _, default in launch_settings(cls):
        value = getattr(args, name)
        if isinstance(default, list) and not isinstance(value, list):
            value = [] if value is None else [value]  # a repeatable setting given once
        values[name] = value
    return cls(**values, **own)


def metadata_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`LaunchOptions.metadata` from the parsed metadata options."""
    return launch_request(LaunchRequest, args).metadata


# The options several commands take, declared once so that they read and parse alike.


def add_instance_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("instance_id", metavar="INSTANCE_ID")


def add_instance_ids(p: argparse.ArgumentParser, nargs: str = "+") -> None:
    p.add_argument("instance_ids", nargs=nargs, metavar="INSTANCE_ID")


def add_tags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")


def add_not_before(p: argparse.ArgumentParser) -> None:
    p.add_argument("--not-before", required=True, metavar="TIME",
                   help="2020-03-25T10:00:00.000Z (UTC) or +SECONDS from now")  # fmt: skip


def add_switch(p: argparse.ArgumentParser, option: str, help: str) -> None:
    """An on/off option, off unless given."""
    p.add_argument(option, action="store_true", help=help)


def add_seconds(
    p: argparse.ArgumentParser, option: str, help: str | None = None, default: float | None = None
) -> None:
    """A duration in seconds (a float)."""
    p.add_argument(option, type=float, default=default, metavar="SECONDS", help=help)


def add_no_reboot(p: argparse.ArgumentParser, help: str) -> None:
    add_switch(p, "--no-reboot", help)


def add_image_json(p: argparse.ArgumentParser, what: str) -> None:
    """--json for a command that registers one image: it prints it as describe-images does."""
    add_json(p, f"print {what} as describe-images JSON")


def print_image(args: argparse.Namespace, rec: ImageRecord) -> int:
    """The image a command registered: describe-images JSON with --json, else its ID."""
    return print_result(args, {"Images": [rec.describe()]}, [rec.image_id])
