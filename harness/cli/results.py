"""`amilab results` (the results database's queries), `amilab bisect` and `amilab dashboard`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from builder.errors import BadInput
from builder.progress import show_table
from harness.cli.command import add_command
from harness.cli.output import add_json

STYLE = {"PASS": "green", "FAIL": "red", "ERROR": "magenta", "SKIP": "dim", "": "dim"}


def add_results_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results-db",
        metavar="URL",
        help="sqlite:////PATH or postgresql://… (else AMILAB_RESULTS_DB, else results.sqlite "
        "in AMILAB_HOME)",
    )


def _open(args: argparse.Namespace, writing: bool = False):  # noqa: ANN202 - db.Database
    from harness.results import db

    explicit = args.results_db or None
    # reading a named SQLite file that is not there is a typo, not a new database
    return db.connect(explicit, create=writing or not explicit)


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _status(s: str) -> str:
    return f"[{STYLE.get(s, 'white')}]{s or '-'}[/]"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) if x is not None else "" for x in r])
    show_table(t, Console())


def _results(args: argparse.Namespace) -> int:  # noqa: C901 - one branch per query
    from harness.results import queries, record

    chosen = [
        n for n in ("run", "regressions", "flaky", "boot_times", "first_broken", "timeline",
                    "import_file") if getattr(args, n)
    ]  # fmt: skip
    if len(chosen) > 1:
        raise BadInput("give one query: --run, --regressions, --flaky, --boot-times, "
                       "--first-broken, --timeline or --import")  # fmt: skip
    if (args.first_broken or args.timeline) and not args.image:
        raise BadInput("--first-broken and --timeline need --image")
    if args.kernels and not args.image:
        raise BadInput("--kernel needs --image")
    store = _open(args, writing=bool(args.import_file))
    try:
        if args.import_file:
            run_id = record.import_report(store, args.import_file, args.name or "")
            doc: Any = {"RunId": run_id}
            if not args.json:
                print(f"recorded {args.import_file} as run {run_id} in {store.where}")
                return 0
        elif args.run:
            doc = queries.grid(store, args.run)
            if not args.json:
                _table(
                    f"run {doc['RunId']} {doc['Started']} on {doc['Host']} ({doc['Name']})",
                    ["cell", "status", "class", "kernel", "release", "s to SSH"],
                    [[c["Cell"], _status(c["Status"]) + (" ~flaky" if c["Flaky"] else ""),
                      c["Class"] + (f" (known {c['KnownIssue']})" if c["KnownIssue"] else ""),
                      c["KernelName"] or c["KernelId"], c["KernelRelease"], c["SecondsToSsh"]]
                     for c in doc["Cells"]],
                )  # fmt: skip
                return 0
        elif args.regressions:
            doc = {"Since": args.since or "", "Regressions": queries.regressions(store, args.since)}
            if not args.json:
                _table(
                    f"regressions since {args.since or 'the first run'}",
                    ["cell", "broke in run", "class", "evidence", "now"],
                    [[r["Cell"], f"{r['RunId']} {r['Started']}", r["Class"],
                      (r["Evidence"] or [{"Text": ""}])[0]["Text"], _status(r["Now"])]
                     for r in doc["Regressions"]],
                )  # fmt: skip
                return 0
        elif args.flaky:
            doc = {"Flaky": queries.flaky(store, args.window)}
            if not args.json:
                _table(
                    "flaky cells",
                    ["cell", "runs", "flips", "flip rate", "passed on retry", "pass rate", "seen"],
                    [[f["Cell"], f["Runs"], f["Flips"], f"{f['FlipRate']:.0%}",
                      f["PassedOnRetry"], f"{f['PassRate']:.0%}",
                      " ".join(s[0] for s in f["Statuses"])] for f in doc["Flaky"]],
                )  # fmt: skip
                return 0
        elif args.boot_times:
            doc = {"BootTimes": queries.boot_times(store, args.image)}
            if not args.json:
                _table(
                    "seconds to SSH per kernel (median of passing cells per run)",
                    ["kernel", "runs", "first", "last", "last/first", "points"],
                    [[k["Kernel"], len(k["Points"]), k["Points"][0]["SecondsToSsh"],
                      k["Points"][-1]["SecondsToSsh"], k["Change"],
                      " ".join(f"{p['SecondsToSsh']:.1f}" for p in k["Points"][-12:])]
                     for k in doc["BootTimes"]],
                )  # fmt: skip
                return 0
        elif args.first_broken:
            doc = queries.first_broken(store, args.image, args.kernels or None)
            if not args.json:
                _print_first_broken(doc)
                return 0
        elif args.timeline:
            doc = queries.timeline(store, args.image)
            if not args.json:
                _table(
                    f"{args.image} across runs",
                    ["cell", *[str(r["RunId"]) for r in doc["Runs"]]],
                    [[row, *[_status(c["Status"]) if c else "" for c in cells]]
                     for row, cells in zip(doc["Cells"], doc["Grid"], strict=True)],
                )  # fmt: skip
                return 0
        elif args.image:
            kernel = args.kernels[0] if args.kernels else None
            doc = {"Image": args.image, "Kernel": kernel or "",
                   "History": queries.history(store, args.image, kernel)}  # fmt: skip
            if not args.json:
                _table(
                    f"history of {args.image}" + (f" × {args.kernels[0]}" if args.kernels else ""),
                    ["run", "started", "host", "cell", "status", "class", "release", "s to SSH"],
                    [[h["RunId"], h["Started"], h["Host"], h["Cell"], _status(h["Status"]),
                      h["Class"], h["KernelRelease"], h["SecondsToSsh"]] for h in doc["History"]],
                )  # fmt: skip
                return 0
        else:
            doc = {"Runs": queries.runs(store, args.limit, args.matrix)}
            if not args.json:
                _table(
                    f"runs in {store.where}, newest first",
                    ["run", "started", "host", "kind", "name", "pass", "fail", "error", "skip",
                     "flaky", "s"],
                    [[r["RunId"], r["Started"], r["Host"], r["Kind"], r["Name"],
                      r["Summary"]["PASS"], r["Summary"]["FAIL"], r["Summary"]["ERROR"],
                      r["Summary"]["SKIP"], r["Summary"]["Flaky"], f"{r['Seconds']:.0f}"]
                     for r in doc["Runs"]],
                )  # fmt: skip
                return 0
        _print_json(doc)
        return 0
    finally:
        store.close()


def _print_first_broken(doc: dict[str, Any]) -> None:
    for s in doc["Series"]:
        print(f"  {s['Kernel']:40} {s['Status'] or 'untested':8} {s['KernelRelease']}")
    lp, ff = doc["LastPass"], doc["FirstFail"]
    print(f"newest passing: {lp['Kernel'] if lp else 'none'}")
    print(f"oldest failing: {ff['Kernel'] if ff else 'none'}" + (f" ({ff['Class']})" if ff else ""))
    if doc["Inconsistent"]:
        print(f"pass after the first failure: {', '.join(doc['Inconsistent'])}")


def register_results(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "results", _results, "the results database: runs, grids, history, regressions, flaky",
        description="Query the results every matrix run (and smoke --record) wrote. Without a "
        "query: the runs, newest first. --image X [--kernel K]: that cell's history.",
    )  # fmt: skip
    add_results_db(p)
    p.add_argument("--run", metavar="ID|last", help="one run's grid")
    p.add_argument(
        "--image", metavar="NAME",
        help="an image (as the matrix named it, or its AMI ID or name): its history",
    )  # fmt: skip
    p.add_argument(
        "--kernel", dest="kernels", action="append", default=[], metavar="K",
        help="a kernel (label, AKI ID, name or release); with --first-broken, repeat in order",
    )  # fmt: skip
    p.add_argument("--regressions", action="store_true", help="cells that passed, then failed")
    p.add_argument("--since", metavar="RUN|DATE", help="--regressions after this run or date")
    p.add_argument(
        "--flaky", action="store_true", help="cells that flipped and back, or passed on retry"
    )
    p.add_argument("--window", type=int, default=20, metavar="N",
                   help="--flaky: each cell's last N results (default 20)")  # fmt: skip
    p.add_argument(
        "--boot-times", action="store_true", help="seconds to SSH per kernel over the runs"
    )
    p.add_argument(
        "--first-broken", action="store_true",
        help="--image X: the newest kernel that passes and the oldest that fails (in --kernel "
        "order, else by Debian version of the recorded releases)",
    )  # fmt: skip
    p.add_argument("--timeline", action="store_true", help="--image X: its cells across runs")
    p.add_argument("--import", dest="import_file", type=Path, metavar="REPORT.json",
                   help="record a matrix JSON report (of a run without the database)")  # fmt: skip
    p.add_argument("--name", help="--import: the name the run is recorded under")
    p.add_argument("--matrix", metavar="KEY", help="only the runs of this matrix (MatrixKey)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="runs listed (default 50)")
    add_json(p, "print the answer as JSON (what the dashboard's /api/… serves)")


def _bisect(args: argparse.Namespace) -> int:
    from harness.launch.request import progress_printer
    from harness.results.bisect import BisectRequest, bisect

    if len(args.kernels) < 2:
        raise BadInput("bisect needs an ordered series of at least two --kernel")
    if len(set(args.kernels)) != len(args.kernels):
        raise BadInput("bisect: a kernel is named twice in the series")
    store = _open(args, writing=True)  # exit 2/3 before anything is built or booted
    req = BisectRequest(
        args.image, args.kernels, args.recipes or Path("build.yaml"), args.accel,
        args.ssh_timeout, args.retries, args.known_issues, args.results_db, quiet=args.json,
    )  # fmt: skip
    try:
        doc = bisect(req, store, progress_printer())
    finally:
        store.close()
    if args.json:
        _print_json(doc)
        return 0
    print(f"{doc['Boots']} boots for {len(args.kernels)} kernels (bound {doc['MaxBoots']})")
    for name, key in (("newest passing", "LastPass"), ("oldest failing", "FirstFail")):
        c = doc[key]
        if c is None:
            print(f"{name}: none" + (" (every kernel fails)" if key == "LastPass" else
                                     " (every kernel passes)"))  # fmt: skip
            continue
        print(f"{name}: {c['Kernel']} {c.get('KernelRelease', '')} — {c['Status']}"
              + (f" {c['Class']}" if c["Class"] else "") + f" (run {c['RunId']})")  # fmt: skip
        for e in c["Evidence"]:
            print(f"    {'console:' + str(e['Line']) if e['Line'] else 'check'}: {e['Text']}")
        if c.get("ConsoleLog"):
            print(f"    console log: {c['ConsoleLog']}")
    if doc["Skipped"]:
        print(f"left out (ERROR or SKIP): {', '.join(doc['Skipped'])}")
    return 0


def register_bisect(sub: argparse._SubParsersAction) -> None:
    from harness.launch.accel import ACCELERATORS

    p = add_command(
        sub, "bisect", _bisect, "the first kernel of a series that breaks an image, in log2 boots",
        description="Boot IMAGE with the kernels the search picks from an ordered series "
        "(oldest first; kernels before the boundary pass, those from it on fail) until the "
        "boundary is found: at most ceil(log2 n) + 1 boots. Every boot is recorded in the "
        "results database; the boundary is printed with both cells' evidence.",
    )  # fmt: skip
    p.add_argument("--image", required=True, metavar="NAME", help="recipe name or AMI ID/name")
    p.add_argument("--kernel", dest="kernels", action="append", default=[], metavar="K",
                   help="own, a kernel name or aki- ID; repeat, oldest first")  # fmt: skip
    p.add_argument("--recipes", type=Path, metavar="FILE", help="recipe file (default build.yaml)")
    p.add_argument("--known-issues", type=Path, metavar="FILE", help="as matrix's")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="further attempts of a boot that ends in ERROR (default 1)")  # fmt: skip
    p.add_argument("--accel", choices=ACCELERATORS, default="auto")
    p.add_argument("--ssh-timeout", type=float, default=300.0, metavar="SECONDS")
    add_results_db(p)
    add_json(p, "print the boundary and every boot as JSON")


def _dashboard(args: argparse.Namespace) -> int:
    from harness.results.dashboard import serve

    return serve(args.results_db, args.bind, args.port, args.token or "", args.known_issues)


def register_dashboard(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "dashboard", _dashboard, "the results database as web pages and /api/… JSON",
        description="Serve the runs, each run's grid, each image's timeline, the flaky cells "
        "and the boot-time chart as self-contained pages, and the same data as JSON under "
        "/api/… (/api/runs is `amilab results --json`). Loopback by default; another "
        "--bind needs --token, which every request must then carry (Authorization: Bearer, "
        "or ?token=).",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=8700, help="TCP port (0: any free one)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="default 127.0.0.1")
    p.add_argument("--token", help="the token every request must carry (needed off loopback)")
    p.add_argument("--known-issues", type=Path, metavar="FILE",
                   help="known issues (matrix's YAML), shown as known on every page")  # fmt: skip
    add_results_db(p)
