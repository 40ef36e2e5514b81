"""`amilab matrix`: prepare the cells, run them with an executor, compare, report.

Whatever ends the run (its last cell, Ctrl-C, SIGTERM), the reports are written, with the
cells that did not finish marked not run; the exit code is 130 for an interrupted run,
else 1 when a cell failed or errored (or, with `--fail-on regression`, only on a
regression against the baseline) and 0 otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from builder.signals import sigterm_as_interrupt
from builder.steps import interrupts_held
from harness.launch import accel
from harness.launch.request import progress_printer
from harness.matrix import baseline, html, known, order, recording, static
from harness.matrix.cell_run import RunSettings
from harness.matrix.cells import Cell
from harness.matrix.connect import Tls
from harness.matrix.executor import Executor, default_jobs
from harness.matrix.fleet import DaskExecutor
from harness.matrix.prepare import prepare
from harness.matrix.progress import MatrixProgress
from harness.matrix.report import Run, print_table, write_junit
from harness.matrix.results import ERROR, FAIL, CellResult
from harness.matrix.spec import MatrixSpec

INTERRUPTED = 130


@dataclass(kw_only=True)
class MatrixRequest:
    spec: MatrixSpec
    jobs: int | None = None
    retries: int = 1
    accel: str = "auto"
    ssh_timeout: float = 300.0
    keep: bool = False
    known_issues: Path | None = None
    json: bool = False
    json_file: Path | None = None
    junit: Path | None = None
    html: Path | None = None
    baseline: Path | str | None = None  # an earlier JSON report, or "last": the database's
    fail_on: str = "failure"  # failure | regression
    scheduler: str | None = None  # a running dask scheduler; None: the embedded cluster
    tls: Tls | None = None
    artifacts: str | None = None  # s3://bucket/prefix or a shared directory
    endpoint_url: str | None = None
    record: bool = True  # write the run's cells to the results database
    results_db: str | None = None  # its URL (else AMILAB_RESULTS_DB, else AMILAB_HOME's)
    name: str = ""  # what the run is recorded under (the matrix file)
    static_only: bool = False  # the modules' static verdicts alone: no QEMU (static.py)


def _write_reports(req: MatrixRequest, run: Run, history: dict[str, str] | None = None) -> None:
    doc = run.to_json()
    if req.json_file:
        req.json_file.parent.mkdir(parents=True, exist_ok=True)
        req.json_file.write_text(json.dumps(doc, indent=2) + "\n")
    if req.junit:
        write_junit(run, req.junit, history)
    if req.html:
        html.write(run, req.html)
    if req.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(run, Console())


def exit_code(run: Run, fail_on: str) -> int:
    if run.interrupted:
        return INTERRUPTED
    if fail_on == "regression":
        return 1 if run.comparison and run.comparison.regressions else 0
    return 1 if any(r.status in (FAIL, ERROR) for r in run.results) else 0


def matrix_static(req: MatrixRequest) -> int:
    """`matrix --static-only`: images × kernels × modules from the files, no guest, no
    accelerator probe, nothing recorded (a static run is not a boot's history); exit 1 when
    a module would not load on a cell's kernel."""
    say = progress_printer()
    t0, started = time.monotonic(), time.time()
    cells = prepare(req.spec.cells(), req.spec.recipes, say, quiet=req.json, plan=False)
    results = static.static_only(cells, say)
    run = Run(results, static.STATIC_ONLY, 1, time.monotonic() - t0, started=started)
    _write_reports(req, run)
    return exit_code(run, "failure")


def matrix(req: MatrixRequest, executor: Executor | None = None) -> int:
    if req.static_only:
        return matrix_static(req)
    say = progress_printer()
    # paramiko's transport threads log every early probe sshd drops (with a traceback);
    # the cells' verdicts say what matters, so their noise stays out of the display
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    issues = tuple(known.load(req.known_issues)) if req.known_issues else ()
    cells: list[Cell] = req.spec.cells()
    # the database first: a bad URL, an unreachable server or a newer schema is exit 2/3
    # before anything is built, booted or written
    store = recording.open_store(req.results_db, req.record, req.baseline == recording.LAST)
    old, earlier, baseline_name = None, {}, str(req.baseline)
    if req.baseline == recording.LAST:
        old, earlier, baseline_name = recording.last_run(store, cells)
    elif req.baseline:
        old, earlier = baseline.load(Path(req.baseline)), baseline.durations(Path(req.baseline))
    jobs = req.jobs or default_jobs()
    started = time.time()
    results: list[CellResult] = []
    interrupted = False
    t0 = time.monotonic()
    chosen_name = req.accel
    with sigterm_as_interrupt():
        try:
            executor = executor or DaskExecutor(
                jobs, scheduler=req.scheduler, tls=req.tls, artifacts_at=req.artifacts,
                endpoint_url=req.endpoint_url, accel=req.accel, say=say,
            )  # fmt: skip
            if isinstance(executor, DaskExecutor):
                executor.open()  # a scheduler that cannot run cells: exit 3 before any build
            if req.scheduler is None:
                chosen = accel.choose(req.accel)
                chosen_name = chosen.name
                say(f"accelerator: {chosen.describe()}; {len(cells)} cells, {jobs} at once")
                settings = RunSettings(
                    chosen.name, chosen.reason, req.ssh_timeout, req.retries, req.keep, issues
                )
            else:  # each worker probes its own host's accelerator
                chosen_name = f"{req.accel} (per worker)"
                say(f"{len(cells)} cells on the workers of {req.scheduler}")
                named = req.accel if req.accel != "auto" else "tcg"
                settings = RunSettings(named, "", req.ssh_timeout, req.retries, req.keep, issues)
            cells = prepare(cells, req.spec.recipes, say, quiet=req.json)
            # cells' StartedAt count from here: after the builds, as the cells' own clock
            settings = replace(settings, run_started=time.time())
            cores = os.cpu_count() or 1
            runnable = order.longest_first([c for c in cells if not c.skip], cores, earlier)
            budget = getattr(executor, "vcpus", None)  # the embedded worker's vCPUs
            if budget:
                length = order.lengths(runnable, cores, earlier)
                runnable = order.start_order(runnable, length, jobs, budget)
            with MatrixProgress(len(runnable)) as shown:
                try:
                    ran = executor.run(runnable, settings, shown.started, shown.done)
                except KeyboardInterrupt:
                    interrupted = True
                    ran = getattr(executor, "results", [])
            by_key = {r.cell.key: r for r in ran}
            results = [by_key.get(c.key) or CellResult(c, not_run=not c.skip) for c in cells]
            static.attach(results)  # each module's static verdict beside the boot's
        except KeyboardInterrupt:  # before or between the cells: none of them ran
            interrupted = True
            done = {r.cell.key for r in results}
            results += [CellResult(c, not_run=True) for c in cells if c.key not in done]
        finally:
            if isinstance(executor, DaskExecutor):
                executor.close()
        if interrupted:
            say("interrupted: every guest stopped; writing the reports")
        jobs = getattr(executor, "slots", jobs)
        run = Run(results, chosen_name, jobs, time.monotonic() - t0, interrupted, started=started)
        if old is not None and req.baseline is not None:
            run.comparison = baseline.compare(old, results, baseline_name)
        with interrupts_held():  # a second Ctrl-C must not cut the reports short
            history = None
            if store is not None and req.record:
                run.run_id, history = recording.record_run(store, req, run, say)
            _write_reports(req, run, history)
        if store is not None:
            store.close()
    return exit_code(run, req.fail_on)
