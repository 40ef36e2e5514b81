"""`amilab fsck`: the registry checked against the artifact store, and repaired."""

from __future__ import annotations

import argparse

from harness.cli.command import add_command
from harness.cli.flags import add_switch
from harness.cli.output import add_json, show


def _fsck(args: argparse.Namespace) -> int:
    from builder.state import fsck

    report = fsck.repair() if args.repair else fsck.check()

    def human() -> None:
        for f in report.repaired:
            print(f"repaired {f.kind} {f.resource}: {f.detail}")
        for f in report.findings:
            where = f" ({f.path})" if f.path else ""
            print(f"{f.kind} {f.resource}{where}: {f.detail}")
        if not report.findings:
            print(f"clean ({report.files_hashed} files hashed, {report.files_cached} cached)")

    show(args, report.describe(), human)
    return 1 if report.findings else 0


def register_fsck(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "fsck", _fsck, "check the registry against the artifact store (exit 1 on findings)"
    )
    add_switch(p, "--repair", "fail stale pending records, remove dead work, quarantine orphans")
    add_json(p)
