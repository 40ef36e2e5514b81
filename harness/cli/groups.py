"""`amilab --help`: the commands under headings, one line each, as `git help` lists them.

The table below is the one place that says which group a command is in and in what order
`amilab --help` shows it; tests/unit/harness/cli/test_help_snapshot.py fails when a command
has no group, or two. A command missing here still shows, under "Other", so that a stale
table never hides one from a user.
"""

from __future__ import annotations

import argparse

from harness.cli.command import Parser

GROUPS: dict[str, tuple[str, ...]] = {
    "Images": (
        "build", "images", "create-image", "copy-image", "deregister", "tag", "untag",
        "launch-permission",
    ),
    "Kernels and modules": ("kernels", "register-kernel", "add-modules", "modules"),
    "Disks": ("convert", "inspect", "import"),
    "Bundles and stores": (
        "bundle", "unbundle", "register", "upload-bundle", "bundle-vol", "store", "store-tasks",
        "restore",
    ),
    "Launch and test": ("boot", "smoke", "matrix"),
    "Results over time": ("results", "bisect", "dashboard"),
    "Instances": (
        "run-instances", "describe-instances", "describe-instance-status", "stop-instances",
        "start-instances", "reboot-instances", "terminate-instances",
        "modify-instance-attribute", "schedule-instance-event",
        "modify-instance-event-start-time", "get-console-output", "ssh",
    ),
    "Volumes and snapshots": (
        "create-volume", "attach-volume", "detach-volume", "describe-volumes", "delete-volume",
        "create-snapshot", "describe-snapshots", "copy-snapshot", "delete-snapshot",
    ),
    "Key pairs": ("create-key-pair", "import-key-pair", "describe-key-pairs", "delete-key-pair"),
    "Services": ("imds", "api"),
    "State": ("fsck", "df", "prune"),
}  # fmt: skip
OTHER = "Other"
METAVAR = "<command>"
WIDE = 20  # the longest name the help's text column makes room for


class CommandsParser(Parser):
    """The top-level parser: its help lists the subcommands by group instead of argparse's
    brace list of every name followed by every description."""

    def format_usage(self) -> str:
        return f"usage: {self.prog} [-h] {METAVAR} [<args>]\n"

    def format_help(self) -> str:
        commands = _commands(self)
        # one column for the text, as git's; the few names longer than WIDE overrun it rather
        # than push every line right
        width = max((len(n) for n in commands if len(n) <= WIDE), default=WIDE)
        lines = [self.format_usage().rstrip(), "", self.description or ""]
        for heading, names in grouped(list(commands)):
            lines += ["", heading]
            # one line per command, never wrapped, as git prints them
            lines += [f"   {name.ljust(width)}   {commands[name]}" for name in names]
        lines += [
            "",
            "options:",
            "  -h, --help  show this help message and exit",
            "",
            f"'{self.prog} <command> --help' shows a command's options.",
        ]
        return "\n".join(lines) + "\n"


def grouped(names: list[str]) -> list[tuple[str, list[str]]]:
    """(heading, commands) in the table's order, with only the commands that exist; those
    the table lacks come last, under "Other"."""
    known = set(names)
    out = [(h, [n for n in group if n in known]) for h, group in GROUPS.items()]
    placed = {n for group in GROUPS.values() for n in group}
    other = [n for n in names if n not in placed]
    return [(h, ns) for h, ns in out + [(OTHER, other)] if ns]


def _commands(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each subcommand's name and one-line help, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}
