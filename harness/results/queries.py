"""What `amilab results`, the dashboard and `--baseline last` ask of the results database.

Every answer is plain JSON-ready data with AWS-style field names, so `results --json` and
the dashboard's `/api/…` print the same documents. Cells are compared across runs by their
key (row × kernel as the user named them, `Cell.key`), in the order the runs started.

A regression is a cell that passed and then failed (not as a known issue); a fix the other
way. A flaky cell flipped verdict and back (two changes or more within the window: a single
change is a regression or a fix), or passed only on a retry.
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from typing import Any

from builder.errors import BadInput
from harness.results import debver
from harness.results.db import Database

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"
FLAKY_WINDOW = 20  # the last runs of each cell `--flaky` looks at

_RUN_COLUMNS = (
    "id, kind, matrix_key, name, started, ended, host, home, workers, accelerator, jobs, "
    "seconds, interrupted, options, reports"
)
_CELL_COLUMNS = (
    "c.id, c.run_id, c.position, c.cell_key, c.row_label, c.image, c.image_id, c.image_name, "
    "c.kernel, c.kernel_id, c.kernel_name, c.kernel_release, c.options, c.status, c.class, "
    "c.evidence, c.known_issue, c.flaky, c.attempts, c.seconds, c.seconds_to_ssh, "
    "c.cpu_seconds, c.phases, c.checks, c.modules, c.console_log, c.instance_id, c.worker"
)


def _run_json(r: dict[str, Any], summary: dict[str, int] | None = None) -> dict[str, Any]:
    out = {
        "RunId": int(r["id"]),
        "Kind": r["kind"],
        "Name": r["name"],
        "MatrixKey": r["matrix_key"],
        "Started": r["started"],
        "Ended": r["ended"],
        "Host": r["host"],
        "Home": r["home"],
        "Workers": json.loads(r["workers"]),
        "Accelerator": r["accelerator"],
        "Jobs": int(r["jobs"]),
        "Seconds": float(r["seconds"]),
        "Interrupted": bool(r["interrupted"]),
        "Options": json.loads(r["options"]),
        "Reports": json.loads(r["reports"]),
    }
    if summary is not None:
        out["Summary"] = summary
    return out


def cell_json(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "CellId": int(c["id"]),
        "RunId": int(c["run_id"]),
        "Cell": c["cell_key"],
        "Row": c["row_label"],
        "Image": c["image"],
        "ImageId": c["image_id"],
        "ImageName": c["image_name"],
        "Kernel": c["kernel"],
        "KernelId": c["kernel_id"],
        "KernelName": c["kernel_name"],
        "KernelRelease": c["kernel_release"],
        "Options": json.loads(c["options"]),
        "Status": c["status"],
        "Class": c["class"],
        "Evidence": json.loads(c["evidence"]),
        "KnownIssue": c["known_issue"],
        "Flaky": bool(c["flaky"]),
        "Attempts": json.loads(c["attempts"]),
        "Seconds": float(c["seconds"]),
        "SecondsToSsh": c["seconds_to_ssh"],
        "QemuCpuSecondsToSsh": c["cpu_seconds"],
        "BootPhases": json.loads(c["phases"]),
        "Checks": json.loads(c["checks"]),
        "Modules": json.loads(c["modules"]),
        "ConsoleLog": c["console_log"],
        "InstanceId": c["instance_id"],
        "Worker": json.loads(c["worker"]),
    }


def _summaries(db: Database, run_ids: list[int]) -> dict[int, dict[str, int]]:
    if not run_ids:
        return {}
    marks = ", ".join("?" * len(run_ids))
    out = {i: {PASS: 0, FAIL: 0, ERROR: 0, SKIP: 0, "Flaky": 0, "Known": 0} for i in run_ids}
    for r in db.rows(
        f"SELECT run_id, status, SUM(flaky) AS flaky, "
        f"SUM(CASE WHEN known_issue <> '' THEN 1 ELSE 0 END) AS known, COUNT(*) AS n "
        f"FROM cells WHERE run_id IN ({marks}) GROUP BY run_id, status",
        run_ids,
    ):
        s = out[int(r["run_id"])]
        s[r["status"]] = s.get(r["status"], 0) + int(r["n"])
        s["Flaky"] += int(r["flaky"] or 0)
        s["Known"] += int(r["known"] or 0)
    return out


def runs(db: Database, limit: int = 50, matrix: str | None = None) -> list[dict[str, Any]]:
    """The runs, newest first, each with its verdict counts."""
    where, params = ("WHERE matrix_key = ?", [matrix]) if matrix else ("", [])
    rows = db.rows(
        f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY started DESC, id DESC LIMIT ?",
        [*params, limit],
    )
    sums = _summaries(db, [int(r["id"]) for r in rows])
    return [_run_json(r, sums[int(r["id"])]) for r in rows]


def find_run(db: Database, ref: str | int) -> dict[str, Any]:
    """A run by its ID, or `last`."""
    if str(ref) in ("last", "latest"):
        rows = db.rows(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY started DESC, id DESC LIMIT 1")
    else:
        try:
            rows = db.rows(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", [int(ref)])
        except ValueError:
            raise BadInput(f"run {ref!r}: expected a run ID or 'last'") from None
    if not rows:
        raise BadInput(f"run {ref}: no such run in {db.where}")
    return rows[0]


def grid(db: Database, ref: str | int) -> dict[str, Any]:
    """One run with its cells, in the matrix's order."""
    run = find_run(db, ref)
    cells = db.rows(
        f"SELECT {_CELL_COLUMNS} FROM cells c WHERE c.run_id = ? ORDER BY c.position",
        [int(run["id"])],
    )
    out = _run_json(run, _summaries(db, [int(run["id"])])[int(run["id"])])
    out["Cells"] = [cell_json(c) for c in cells]
    return out


def previous_run(db: Database, key: str, before: str | None = None) -> dict[str, Any] | None:
    """The newest run of the same matrix (`--baseline last`)."""
    cond, params = ("AND started < ?", [before]) if before else ("", [])
    rows = db.rows(
        f"SELECT id, started FROM runs WHERE matrix_key = ? {cond} "
        "ORDER BY started DESC, id DESC LIMIT 1",
        [key, *params],
    )
    return rows[0] if rows else None


def statuses(db: Database, run_id: int) -> tuple[dict[str, str], dict[str, float]]:
    """A run's cell key -> status and -> seconds (what a baseline file gives)."""
    rows = db.rows(
        "SELECT cell_key, status, class, seconds, attempts FROM cells WHERE run_id = ?", [run_id]
    )
    status = {r["cell_key"]: r["status"] for r in rows if r["class"] != "not run"}
    secs = {}
    for r in rows:
        attempts = json.loads(r["attempts"])
        last = attempts[-1].get("Seconds") if attempts else None
        if isinstance(last, (int, float)) and last > 0:
            secs[r["cell_key"]] = float(last)
    return status, secs


def _match(image: str | None, kernel: str | None) -> tuple[str, list[str]]:
    conds, params = [], []
    if image:
        conds.append("(c.image = ? OR c.image_id = ? OR c.image_name = ? OR c.row_label = ?)")
        params += [image] * 4
    if kernel:
        conds.append(
            "(c.kernel = ? OR c.kernel_id = ? OR c.kernel_name = ? OR c.kernel_release = ?)"
        )
        params += [kernel] * 4
    return (" AND ".join(conds) or "1 = 1"), params


def history(db: Database, image: str, kernel: str | None = None, limit: int = 200) -> list:
    """Every recorded result of an image (× a kernel), oldest first."""
    where, params = _match(image, kernel)
    rows = db.rows(
        f"SELECT {_CELL_COLUMNS}, r.started, r.host FROM cells c JOIN runs r ON r.id = c.run_id "
        f"WHERE {where} ORDER BY r.started DESC, r.id DESC, c.position LIMIT ?",
        [*params, limit],
    )
    out = []
    for r in reversed(rows):
        doc = cell_json(r)
        out.append({"Started": r["started"], "Host": r["host"], **doc})
    return out


def _timeline_rows(db: Database, since: str | None = None) -> list[dict[str, Any]]:
    """(cell, status, run) for every cell, in run order: what regressions and flakes read."""
    cond, params = ("WHERE r.started >= ?", [since]) if since else ("", [])
    return db.rows(
        "SELECT c.cell_key, c.status, c.class, c.known_issue, c.flaky, c.evidence, c.run_id, "
        f"r.started FROM cells c JOIN runs r ON r.id = c.run_id {cond} "
        "ORDER BY r.started, r.id",
        params,
    )


def _since(db: Database, since: str | None) -> str | None:
    """A run ID, `last`, or a date (ISO 8601) -> the start time it means."""
    if not since:
        return None
    if since.isdigit() or since in ("last", "latest"):
        return str(find_run(db, since)["started"])
    try:
        when = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"--since {since!r}: expected a run ID, 'last' or a date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def regressions(db: Database, since: str | None = None) -> list[dict[str, Any]]:
    """Cells that passed and then failed after `since` (a run: that run is the baseline; a
    date: the last result before it is), once each, with the run that broke them and the
    evidence; `Now` is their latest status."""
    start = _since(db, since)
    before: dict[str, str] = {}
    if start:  # each cell's last status up to the baseline
        for r in db.rows(
            "SELECT c.cell_key, c.status FROM cells c JOIN runs r ON r.id = c.run_id "
            "WHERE r.started <= ? ORDER BY r.started, r.id",
            [start],
        ):
            if r["status"] != SKIP:
                before[r["cell_key"]] = r["status"]
    rows = [r for r in _timeline_rows(db, start) if not (start and r["started"] == start)]
    last = dict(before)
    found: dict[str, dict[str, Any]] = {}
    now: dict[str, str] = {}
    for r in rows:
        key, status = r["cell_key"], r["status"]
        if status == SKIP:
            continue
        now[key] = status
        was = last.get(key)
        if key not in found and was == PASS and status == FAIL and not r["known_issue"]:
            found[key] = {
                "Cell": key,
                "Before": {"Status": was},
                "RunId": int(r["run_id"]),
                "Started": r["started"],
                "Status": status,
                "Class": r["class"],
                "Evidence": json.loads(r["evidence"]),
            }
        last[key] = status
    for key, doc in found.items():
        doc["Now"] = now[key]
    return list(found.values())


def flaky(db: Database, window: int = FLAKY_WINDOW) -> list[dict[str, Any]]:
    """Cells whose verdict went and came back (two flips or more in their last `window`
    results), or that passed only on a retry, with the rates."""
    per: dict[str, list[dict[str, Any]]] = {}
    for r in _timeline_rows(db):
        if r["status"] != SKIP:
            per.setdefault(r["cell_key"], []).append(r)
    out = []
    for key, seq in per.items():
        seq = seq[-window:]
        flips = sum(a["status"] != b["status"] for a, b in zip(seq, seq[1:], strict=False))
        retried = sum(int(r["flaky"]) for r in seq)
        if flips < 2 and not retried:
            continue
        n = len(seq)
        passes = sum(r["status"] == PASS for r in seq)
        out.append(
            {
                "Cell": key,
                "Runs": n,
                "Flips": flips,
                "FlipRate": round(flips / max(1, n - 1), 3),
                "PassedOnRetry": retried,
                "RetryRate": round(retried / n, 3),
                "PassRate": round(passes / n, 3),
                "Statuses": [r["status"] for r in seq],
                "RunIds": [int(r["run_id"]) for r in seq],
                "Last": seq[-1]["status"],
            }
        )
    return sorted(out, key=lambda d: (-d["FlipRate"] - d["RetryRate"], d["Cell"]))


def boot_times(db: Database, image: str | None = None) -> list[dict[str, Any]]:
    """Seconds to SSH per kernel (its exact release) over runs: the median of the run's
    passing cells, oldest run first; `Change` is last over first."""
    where, params = _match(image, None)
    rows = db.rows(
        "SELECT c.kernel, c.kernel_release, c.seconds_to_ssh, c.run_id, r.started "
        f"FROM cells c JOIN runs r ON r.id = c.run_id WHERE {where} AND c.status = 'PASS' "
        "AND c.seconds_to_ssh IS NOT NULL ORDER BY r.started, r.id",
        params,
    )
    per: dict[str, dict[int, list[float]]] = {}
    started: dict[int, str] = {}
    labels: dict[str, set[str]] = {}
    for r in rows:
        k = r["kernel_release"] or r["kernel"]
        per.setdefault(k, {}).setdefault(int(r["run_id"]), []).append(float(r["seconds_to_ssh"]))
        labels.setdefault(k, set()).add(r["kernel"])
        started[int(r["run_id"])] = r["started"]
    out = []
    for k in sorted(per, key=debver.sort_key):
        points = [
            {"RunId": run, "Started": started[run], "SecondsToSsh": round(statistics.median(v), 2),
             "Cells": len(v)}
            for run, v in per[k].items()
        ]  # fmt: skip
        first, last = points[0]["SecondsToSsh"], points[-1]["SecondsToSsh"]
        out.append(
            {
                "Kernel": k,
                "Labels": sorted(labels[k]),
                "Points": points,
                "Change": round(last / first, 3) if first else None,
            }
        )
    return out


def first_broken(db: Database, image: str, kernels: list[str] | None = None) -> dict[str, Any]:
    """For an image and an ordered kernel series (the user's order, else the recorded kernels
    by Debian version), each kernel's latest verdict, the newest kernel that passes before
    the oldest that fails, and any that pass after it (`Inconsistent`)."""
    where, params = _match(image, None)
    rows = db.rows(
        "SELECT c.kernel, c.kernel_id, c.kernel_name, c.kernel_release, c.status, c.class, "
        f"c.evidence, c.run_id, r.started FROM cells c JOIN runs r ON r.id = c.run_id "
        f"WHERE {where} AND c.status <> 'SKIP' ORDER BY r.started, r.id",
        params,
    )
    if kernels is None:
        names = {r["kernel_release"] or r["kernel"] for r in rows}
        kernels = sorted(names, key=debver.sort_key)
    series = []
    for k in kernels:
        hits = [
            r for r in rows
            if k in (r["kernel"], r["kernel_id"], r["kernel_name"], r["kernel_release"])
        ]  # fmt: skip
        latest = hits[-1] if hits else None
        series.append(
            {"Kernel": k, "Status": latest["status"] if latest else "",
             "Class": latest["class"] if latest else "",
             "KernelRelease": latest["kernel_release"] if latest else "",
             "RunId": int(latest["run_id"]) if latest else None,
             "Evidence": json.loads(latest["evidence"]) if latest else []}
        )  # fmt: skip
    first_fail = next((i for i, s in enumerate(series) if s["Status"] == FAIL), None)
    upto = len(series) if first_fail is None else first_fail
    last_pass = next((i for i in range(upto - 1, -1, -1) if series[i]["Status"] == PASS), None)
    after = series[first_fail + 1 :] if first_fail is not None else []
    return {
        "Image": image,
        "Series": series,
        "LastPass": series[last_pass] if last_pass is not None else None,
        "FirstFail": series[first_fail] if first_fail is not None else None,
        "Untested": [s["Kernel"] for s in series if not s["Status"]],
        "Inconsistent": [s["Kernel"] for s in after if s["Status"] == PASS],
    }


def timeline(db: Database, image: str, limit: int = 30) -> dict[str, Any]:
    """An image's cells across its last runs: kernels down, runs across."""
    where, params = _match(image, None)
    run_rows = db.rows(
        f"SELECT DISTINCT r.id, r.started FROM runs r JOIN cells c ON c.run_id = r.id "
        f"WHERE {where} ORDER BY r.started DESC, r.id DESC LIMIT ?",
        [*params, limit],
    )
    ids = [int(r["id"]) for r in reversed(run_rows)]
    cells: list[dict[str, Any]] = []
    if ids:
        marks = ", ".join("?" * len(ids))
        cells = db.rows(
            f"SELECT {_CELL_COLUMNS} FROM cells c WHERE {where} AND c.run_id IN ({marks}) "
            "ORDER BY c.position",
            [*params, *ids],
        )
    rows = list(dict.fromkeys(f"{c['row_label']} × {c['kernel']}" for c in cells))
    grid = {f"{c['row_label']} × {c['kernel']}|{c['run_id']}": cell_json(c) for c in cells}
    return {
        "Image": image,
        "Runs": [{"RunId": int(r["id"]), "Started": r["started"]} for r in reversed(run_rows)],
        "Cells": rows,
        "Grid": [[grid.get(f"{row}|{i}") for i in ids] for row in rows],
    }


def images(db: Database) -> list[str]:
    return [r["image"] for r in db.rows("SELECT DISTINCT image FROM cells ORDER BY image")]


def cell(db: Database, cell_id: int) -> dict[str, Any]:
    rows = db.rows(f"SELECT {_CELL_COLUMNS} FROM cells c WHERE c.id = ?", [cell_id])
    if not rows:
        raise BadInput(f"cell {cell_id}: no such cell")
    return cell_json(rows[0])
