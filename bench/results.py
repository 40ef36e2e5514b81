"""The results store at size: 10,000 synthetic cells, copied from real cells with their IDs
varied, recorded into SQLite and into PostgreSQL; then the record rate, the queries
(`results --regressions` and the others) and the dashboard's pages, each timed.

    .venv/bin/python -m bench.results [--from REPORT.json] [--runs 100] [--cells-per-run 100]
                                      [--postgresql URL|start|none]

`--from` is a real matrix JSON report (default: bench/data/matrix-report.json, the
integration test's three cells of debian-pv × own, bullseye, a broken kernel). Each
synthetic run holds `--cells-per-run` cells: the real cells under other image names, each
with new AMI, AKI and instance IDs, their verdicts flipped now and then (seeded), so that
regressions and flaky cells exist. `--postgresql start` starts a throwaway server
(tests/postgres.py: Debian's initdb and pg_ctl on a Unix socket).
Target: every query and page under 300 ms at that size (median of 5, after one warm-up).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import secrets
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from harness.results import db, queries, record
from harness.results.dashboard import Dashboard, make_server
from harness.results.known_view import Known

HERE = Path(__file__).resolve().parent
TARGET_MS = 300.0
T0 = 1_900_000_000.0


def _hex17() -> str:
    return secrets.token_hex(9)[:17]


def synthetic_runs(real: list[dict[str, Any]], runs: int, per_run: int, seed: int = 30):
    """`runs` lists of `per_run` cells: the real cells under image names img-000…, IDs
    varied, each verdict flipped with probability 0.05 (seeded)."""
    rng = random.Random(seed)
    images = max(1, -(-per_run // len(real)))  # enough images to fill a run
    ami = {i: f"ami-{_hex17()}" for i in range(images)}
    for _ in range(runs):
        cells = []
        for i in range(images):
            for c in real:
                c = copy.deepcopy(c)
                name = f"img-{i:03d}"
                c["Cell"] = c["Cell"].replace(c["Row"], name, 1)
                c.update(Row=name, Image=name, ImageName=name, ImageId=ami[i],
                         InstanceId=f"i-{_hex17()}")  # fmt: skip
                if rng.random() < 0.05:
                    c["Status"] = "FAIL" if c["Status"] == "PASS" else "PASS"
                if c["Status"] == "PASS" and c.get("SecondsToSsh") is None:
                    c["SecondsToSsh"] = 12.0
                if c.get("SecondsToSsh") is not None:
                    c["SecondsToSsh"] = round(c["SecondsToSsh"] * rng.uniform(0.8, 1.25), 2)
                cells.append(c)
        yield cells[:per_run]


def _median_ms(fn: Callable[[], Any], n: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(url: str, real: list[dict[str, Any]], runs: int, per_run: int) -> dict[str, float]:
    store = db.connect(url)
    t = time.perf_counter()
    n = 0
    for k, cells in enumerate(synthetic_runs(real, runs, per_run)):
        info = record.RunInfo("matrix", "bench", T0 + 600 * k, T0 + 600 * k + 300, "tcg", 2)
        record.write_run(store, info, cells)
        n += len(cells)
    took = time.perf_counter() - t
    out = {"cells": n, "record s": took, "cells/s": n / took}
    first = str(queries.runs(store, 10_000)[-1]["RunId"])
    image = "img-000"
    kernel = real[0]["Kernel"]
    out |= {
        "regressions ms": _median_ms(lambda: queries.regressions(store, first)),
        "flaky ms": _median_ms(lambda: queries.flaky(store)),
        "runs ms": _median_ms(lambda: queries.runs(store)),
        "grid ms": _median_ms(lambda: queries.grid(store, "last")),
        "history ms": _median_ms(lambda: queries.history(store, image, kernel)),
        "boot-times ms": _median_ms(lambda: queries.boot_times(store)),
        "first-broken ms": _median_ms(lambda: queries.first_broken(store, image)),
    }
    board = Dashboard(store, Known())
    server = make_server(board, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    last = queries.runs(store, 1)[0]["RunId"]

    def get(path: str) -> Callable[[], bytes]:
        return lambda: urllib.request.urlopen(base + path).read()

    pages = (("grid page", f"/runs/{last}"), ("runs page", "/"),
             ("timeline page", f"/timeline?image={image}"), ("boot-times page", "/boot-times"),
             ("flaky page", "/flaky"), ("/api/runs", "/api/runs"),
             ("/api/regressions", "/api/regressions"))  # fmt: skip
    for name, path in pages:
        out[f"{name} ms"] = _median_ms(get(path))
    server.shutdown()
    store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="report", type=Path, default=HERE / "data/matrix-report.json")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--cells-per-run", type=int, default=100)
    ap.add_argument("--postgresql", default="start", metavar="URL|start|none")
    args = ap.parse_args()
    real = json.loads(args.report.read_text())["Cells"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite"] = measure(f"sqlite:///{tmp}/bench.sqlite", real, args.runs,
                                    args.cells_per_run)  # fmt: skip
    if args.postgresql != "none":
        if args.postgresql == "start":
            from tests.postgres import server

            ctx: Any = server()
        else:
            ctx = nullcontext(args.postgresql)
        with ctx as url:
            results["PostgreSQL"] = measure(url, real, args.runs, args.cells_per_run)
    names = list(next(iter(results.values())))
    print(f"{'':22}" + "".join(f"{k:>14}" for k in results))
    worst = 0.0
    for name in names:
        row = "".join(f"{r[name]:>14.1f}" for r in results.values())
        print(f"{name:22}{row}")
        if name.endswith(" ms"):
            worst = max(worst, *(r[name] for r in results.values()))
    verdict = "met" if worst < TARGET_MS else "MISSED"
    print(f"slowest query or page: {worst:.1f} ms (target < {TARGET_MS:.0f} ms: {verdict})")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
