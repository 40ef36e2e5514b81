"""`amilab --help` and every subcommand's keep every command, option, choice and positional.

tests/data/cli/help-snapshot.json was first written from main's parser before the CLI became
a package, and written again, a superset of that, when `amilab --help` began to list the
commands by group (issue #31): by walking make_parser()'s actions (subcommands, each option's
flags, choices and whether it is required, positionals), plus `groups`, the headings of
`amilab --help` in order with their commands. The current parser must still have every
command, option, choice and positional in it, unchanged (new ones may be added); the help
must print every command once, under its heading, and every option of each command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.cli import make_parser
from harness.cli.groups import GROUPS, OTHER

SNAPSHOT = Path(__file__).parents[3] / "data" / "cli" / "help-snapshot.json"


def describe(p: argparse.ArgumentParser) -> dict[str, Any]:
    """The same description the snapshot holds (the walk that wrote it, unchanged)."""
    out: dict[str, Any] = {"options": [], "positionals": [], "subcommands": {}}
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                out["subcommands"][name] = describe(sp)
        elif a.option_strings:
            out["options"].append(
                {
                    "flags": sorted(a.option_strings),
                    "choices": sorted(map(str, a.choices)) if a.choices else None,
                    "required": a.required,
                }
            )
        else:
            out["positionals"].append({"dest": a.dest, "nargs": a.nargs})
    out["options"].sort(key=lambda o: o["flags"])
    return out


def _missing(before: dict[str, Any], now: dict[str, Any], where: str) -> list[str]:
    """What `before` declares that `now` lacks or declares otherwise, one line each."""
    problems = []
    options = {tuple(o["flags"]): o for o in now["options"]}
    for o in before["options"]:
        flags = tuple(o["flags"])
        got = options.get(flags)
        if got is None:
            problems.append(f"{where}: option {'/'.join(flags)} is gone")
            continue
        if got["required"] != o["required"]:
            problems.append(f"{where} {flags[0]}: required {o['required']} -> {got['required']}")
        if o["choices"] is not None:
            lost = set(o["choices"]) - set(got["choices"] or [])
            if got["choices"] is None or lost:
                problems.append(f"{where} {flags[0]}: choices lost {sorted(lost)}")
    if now["positionals"][: len(before["positionals"])] != before["positionals"]:
        problems.append(f"{where}: positionals {before['positionals']} -> {now['positionals']}")
    for name, sub in before["subcommands"].items():
        if name not in now["subcommands"]:
            problems.append(f"{where}: subcommand {name} is gone")
        else:
            problems += _missing(sub, now["subcommands"][name], f"{where} {name}")
    return problems


def _commands(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, sub in d["subcommands"].items():
        out.append((*prefix, name))
        out += _commands(sub, (*prefix, name))
    return out


SNAPSHOT_DATA = json.loads(SNAPSHOT.read_text())


def test_the_snapshot_covers_the_commands() -> None:
    # a sanity check of the data itself, so an empty snapshot cannot pass everything
    assert {"build", "images", "smoke", "boot", "imds"} <= set(SNAPSHOT_DATA["subcommands"])
    assert len(_commands(SNAPSHOT_DATA)) >= 50
    grouped = [n for _, names in SNAPSHOT_DATA["groups"] for n in names]
    assert sorted(grouped) == sorted(SNAPSHOT_DATA["subcommands"])


def test_every_command_is_in_exactly_one_group() -> None:
    commands = list(describe(make_parser())["subcommands"])
    places = {n: [h for h, names in GROUPS.items() if n in names] for n in commands}
    assert {n: hs for n, hs in places.items() if len(hs) != 1} == {}, "harness/cli/groups.py"
    stale = {n for names in GROUPS.values() for n in names} - set(commands)
    assert stale == set(), "groups.py names commands that do not exist"


def _help_groups(text: str) -> list[list[Any]]:
    """[heading, [command, ...]] as `amilab --help` prints them (git's layout: a heading at
    the margin, then one indented line per command)."""
    body = text.split("\n\n", 2)[2].split("\noptions:")[0]
    out: list[list[Any]] = []
    for line in body.splitlines():
        if line and not line.startswith(" "):
            out.append([line, []])
        elif line.strip():
            out[-1][1].append(line.split()[0])
    return out


def test_grouped_help_lists_every_command_once_under_its_heading() -> None:
    text = make_parser().format_help()
    assert text.startswith("usage: amilab [-h] <command> [<args>]\n")
    printed = _help_groups(text)
    assert printed == SNAPSHOT_DATA["groups"]
    assert OTHER not in [h for h, _ in printed]
    names = [n for _, ns in printed for n in ns]
    assert sorted(names) == sorted(SNAPSHOT_DATA["subcommands"])  # each once, none missing
    assert "{" not in text  # argparse's brace list of every name is gone


def test_every_command_option_choice_and_positional_is_still_there() -> None:
    assert _missing(SNAPSHOT_DATA, describe(make_parser()), "amilab") == []


def test_the_comparison_sees_a_removed_option_and_a_lost_choice() -> None:
    now = describe(make_parser())
    smoke = now["subcommands"]["smoke"]
    smoke["options"] = [o for o in smoke["options"] if o["flags"] != ["--kernel"]]
    fmt = next(o for o in now["subcommands"]["convert"]["options"] if o["flags"] == ["--format"])
    fmt["choices"] = ["raw"]
    problems = _missing(SNAPSHOT_DATA, now, "amilab")
    assert any("smoke: option --kernel is gone" in p for p in problems), problems
    assert any("convert --format: choices lost" in p for p in problems), problems


@pytest.mark.parametrize(
    "command", [" ".join(c) for c in [(), *_commands(SNAPSHOT_DATA)]], ids=lambda c: c or "amilab"
)
def test_help_exits_0(command: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", *command.split(), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: amilab"), r.stdout[:200]
    assert r.stderr == ""
    declared: dict[str, Any] = SNAPSHOT_DATA
    for name in command.split():
        declared = declared["subcommands"][name]
    shown = set(r.stdout.replace(",", " ").replace("[", " ").replace("]", " ").split())
    for option in declared["options"]:
        assert set(option["flags"]) <= shown, (command, option["flags"])
    for name in declared["subcommands"]:
        assert name in r.stdout, (command, name)
