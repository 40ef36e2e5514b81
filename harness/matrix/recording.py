"""A matrix run and the results database: `--baseline last` read from it, the run written
to it (every run by default; `--no-record` not), and the history's verdict on the run's
cells for JUnit (a cell the database has seen flip, or pass only on a retry, is flaky)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from builder.errors import AmilabError
from harness.matrix.cells import Cell
from harness.results import db, queries, record
from harness.results.db import Database

if TYPE_CHECKING:
    from harness.matrix.report import Run
    from harness.matrix.run import MatrixRequest

LAST = "last"


def open_store(url: str | None, recording: bool, reading: bool) -> Database | None:
    """The results database, when the run records or reads it (exit 2/3 otherwise)."""
    return db.connect(url) if recording or reading else None


def last_run(
    store: Database | None, cells: list[Cell]
) -> tuple[dict[str, str], dict[str, float], str]:
    """The previous run of the same matrix (the same cells): its statuses, its cells'
    seconds (for the start order) and what the reports call it."""
    assert store is not None
    prev = queries.previous_run(store, record.matrix_key([c.key for c in cells]))
    if prev is None:
        return {}, {}, f"no earlier run of this matrix in {store.where}"
    old, seconds = queries.statuses(store, int(prev["id"]))
    return old, seconds, f"run {prev['id']} ({prev['started']})"


def _kernel_names(cells: list[dict[str, Any]]) -> dict[str, str]:
    from builder.images.registry import Registry

    names: dict[str, str] = {}
    reg = Registry()
    refs = {c.get("KernelId") or c.get("KernelRef") for c in cells}
    for kid in {r for r in refs if r and str(r).startswith("aki-")}:
        with contextlib.suppress(AmilabError):
            names[str(kid)] = reg.find(str(kid), "kernel").name
    return names


def history_verdicts(store: Database, keys: set[str]) -> dict[str, str]:
    """Cell key -> what the database says of it, for the cells it finds flaky."""
    out = {}
    for f in queries.flaky(store):
        if f["Cell"] in keys:
            out[f["Cell"]] = (
                f"FLAKY in history: {f['Flips']} flips in {f['Runs']} runs "
                f"(flip rate {f['FlipRate']:.0%}), {f['PassedOnRetry']} passed on retry, "
                f"pass rate {f['PassRate']:.0%}"
            )
    return out


def record_run(
    store: Database, req: MatrixRequest, run: Run, say: Callable[[str], None]
) -> tuple[int | None, dict[str, str]]:
    """Write the run; its ID and the history's verdicts on its cells. A database that fails
    now (after the cells ran) costs the record, never the reports."""
    cells = run.to_json()["Cells"]
    reports = {k: str(v) for k, v in (("json", req.json_file), ("junit", req.junit),
                                      ("html", req.html)) if v}  # fmt: skip
    info = record.RunInfo(
        "matrix", req.name, run.started or record.now() - run.seconds,
        (run.started or record.now() - run.seconds) + run.seconds, run.accelerator, run.jobs,
        run.interrupted, reports=reports,
        options={"Retries": req.retries, "Scheduler": req.scheduler or "",
                 "KnownIssues": str(req.known_issues or ""), "Baseline": str(req.baseline or "")},
    )  # fmt: skip
    try:
        run_id = record.write_run(store, info, cells, _kernel_names(cells))
        history = history_verdicts(store, {r.cell.key for r in run.results})
    except Exception as e:  # noqa: BLE001 - psycopg's and sqlite3's errors alike
        say(f"results not recorded in {store.where}: {str(e).strip().splitlines()[0]}")
        return None, {}
    say(f"recorded as run {run_id} in {store.where}")
    return run_id, history
