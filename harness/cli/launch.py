"""Commands that launch instances: `boot` (one, for a person) and `smoke` (build if needed,
boot, check, report). Their launch settings come from one table (harness.cli.flags)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.cli.command import add_command
from harness.cli.flags import add_launch_arguments, add_switch, launch_request
from harness.cli.output import add_json


def _boot(args: argparse.Namespace) -> int:
    from harness.launch.boot import BootRequest, boot

    return boot(
        launch_request(
            BootRequest, args, image=args.image, console=args.console, runner=args.runner
        )
    )


def register_boot(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "boot", _boot,
        "boot an AMI under QEMU (SSH or the serial console), or write its runner",
        description="Boot one instance of an AMI. Without --console: wait for SSH, print how "
        "to log in, run until Ctrl-C. With --console: the serial console (Ctrl-] leaves).",
    )  # fmt: skip
    p.add_argument("image", help="AMI ID or image name")
    add_launch_arguments(p, single=True)
    add_switch(p, "--console", "attach the serial console")
    p.add_argument(
        "--runner",
        type=Path,
        metavar="FILE.pyz",
        help="write a qemu-runner runner for this image instead of booting",
    )


def _smoke(args: argparse.Namespace) -> int:
    from harness.smoke.run import SmokeRequest, smoke

    req = launch_request(
        SmokeRequest, args, target=args.target, image=args.image, json=args.json,
        junit=args.junit, boot_analysis=args.boot_analysis,
    )  # fmt: skip
    if not args.record:
        return smoke(req)[1]
    from harness.results import db, record

    store = db.connect(args.results_db)  # exit 2/3 before anything is built or booted
    started = time.time()
    reports, code = smoke(req)
    docs = [r.to_json() for r in reports]
    info = record.RunInfo(
        "smoke", str(args.target or "build.yaml") + (f" {args.image}" if args.image else ""),
        started, time.time(), docs[0]["Accelerator"] if docs else "", 1,
        reports={"junit": str(args.junit)} if args.junit else {},
    )  # fmt: skip
    run_id = record.write_run(store, info, record.smoke_cells(docs))
    store.close()
    print(f"amilab: recorded as run {run_id} in {store.where}", file=sys.stderr)
    return code


def register_smoke(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "smoke", _smoke, "build if needed, boot, check kernel/modules/metadata, report",
        description="Smoke-test images: a recipe file is built first (default build.yaml); "
        "an AMI ID or name is booted as registered. Exit 1 when a check fails.",
    )  # fmt: skip
    p.add_argument(
        "target",
        nargs="?",
        metavar="RECIPE_FILE | AMI_ID",
        help="recipe file (default build.yaml), or an AMI ID or name",
    )
    p.add_argument("--image", metavar="NAME", help="only this recipe of the file")
    add_launch_arguments(p)
    add_json(p, "print the report as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    p.add_argument(
        "--boot-analysis", choices=("none", "chain", "full"), default="chain",
        help="what systemd-analyze says of the boot, into the report: time and the critical "
        "chain to ssh.service (chain, the default), also blame (full), or nothing",
    )  # fmt: skip
    p.add_argument(
        "--record", action="store_true", help="write each verdict to the results database"
    )
    p.add_argument(
        "--results-db", metavar="URL", help="with --record: sqlite:////PATH or postgresql://… "
        "(else AMILAB_RESULTS_DB, else results.sqlite in AMILAB_HOME)",
    )  # fmt: skip
