"""Writing runs into the results database: a matrix run, a smoke run, an imported report.

Every writer goes through `write_run`: the run's row and all its cells in one transaction,
so a reader (or a second host recording at the same time) sees a run whole or not at all.
Cells are taken in the matrix JSON report's shape (`CellResult.to_json`), which is also what
`amilab results import` reads, so a report written by a run without database access can be
recorded later as it was.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import BadInput
from harness.results.db import Database

HOST_ENV = "AMILAB_RESULTS_HOST"  # the host name runs are recorded under (default: hostname)


def iso(t: float) -> str:
    """A time as ISO 8601 UTC with microseconds: sorts as text in both databases."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def host_name() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


def matrix_key(cell_keys: list[str]) -> str:
    """The same set of cells gives the same key, whatever order and whoever ran them."""
    text = "\n".join(sorted(set(cell_keys)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version() -> str:
    try:
        return metadata.version("amilab")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class RunInfo:
    kind: str  # matrix | smoke | bisect | import
    name: str
    started: float  # time.time()
    ended: float
    accelerator: str = ""
    jobs: int = 1
    interrupted: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)  # JSON/JUnit/HTML paths
    workers: list[dict[str, Any]] = field(default_factory=list)
    host: str = field(default_factory=host_name)
    home: str = field(default_factory=lambda: str(paths.amilab_home()))
    user: str = field(default_factory=lambda: _user())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def workers_of(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct Dask workers the cells name (a fleet run's `Worker`)."""
    seen: dict[str, dict[str, Any]] = {}
    for c in cells:
        w = c.get("Worker")
        if isinstance(w, dict) and w.get("Address"):
            seen.setdefault(str(w["Address"]), w)
    return list(seen.values())


_MODULE_CHECK = re.compile(r"^(modules-tree|modprobe-|module-)")


def _row(run_id: int, position: int, c: dict[str, Any], names: dict[str, str]) -> tuple:
    checks = c.get("Checks") or []
    modules = c.get("Modules")
    if modules is None:  # the module checks, when the report has no static verdicts of its own
        modules = [x for x in checks if _MODULE_CHECK.match(str(x.get("Name", "")))]
    ref, label = str(c.get("KernelRef") or ""), str(c.get("Kernel") or "")
    # a cell that never booted has no report: its kernel is what the cell was to boot
    kernel_id = c.get("KernelId") or (ref if ref.startswith("aki-") else "")
    named = next((x for x in (ref, label) if x and x != "own" and not x.startswith("aki-")), "")
    kernel_name = names.get(kernel_id) or named
    attempts = [
        {k: a.get(k) for k in ("Status", "Class", "InstanceId", "ConsoleLog", "Seconds")}
        for a in c.get("Attempts") or []
    ]
    return (
        run_id,
        position,
        str(c["Cell"]),
        str(c.get("Row") or c["Cell"].rsplit(" × ", 1)[0]),
        str(c.get("Image") or ""),
        str(c.get("ImageId") or ""),
        str(c.get("ImageName") or c.get("Image") or ""),
        str(c.get("Kernel") or c["Cell"].rsplit(" × ", 1)[-1]),
        str(kernel_id),
        str(kernel_name),
        str(c.get("KernelRelease") or ""),
        json.dumps(c.get("Options") or {}, sort_keys=True),
        str(c["Status"]),
        str(c.get("Class") or ""),
        json.dumps(c.get("Evidence") or []),
        str(c.get("KnownIssue") or ""),
        int(bool(c.get("Flaky"))),
        json.dumps(attempts),
        float(c.get("Seconds") or 0.0),
        c.get("SecondsToSsh"),
        c.get("QemuCpuSecondsToSsh"),
        json.dumps(c.get("BootPhases") or {}),
        json.dumps(checks),
        json.dumps(modules),
        str(c.get("ConsoleLog") or ""),
        str(c.get("InstanceId") or ""),
        json.dumps(c.get("Worker") or {}),
    )


CELL_COLUMNS = (
    "run_id, position, cell_key, row_label, image, image_id, image_name, kernel, kernel_id, "
    "kernel_name, kernel_release, options, status, class, evidence, known_issue, flaky, "
    "attempts, seconds, seconds_to_ssh, cpu_seconds, phases, checks, modules, console_log, "
    "instance_id, worker"
)


def write_run(
    db: Database,
    info: RunInfo,
    cells: list[dict[str, Any]],
    kernel_names: dict[str, str] | None = None,
) -> int:
    """Record one run and its cells (one transaction); its run ID."""
    names = kernel_names or {}
    key = matrix_key([str(c["Cell"]) for c in cells])
    options = {**info.options, "User": info.user} if info.user else info.options
    with db.transaction():
        run_id = db.execute(
            "INSERT INTO runs (kind, matrix_key, name, started, ended, host, home, workers, "
            "accelerator, jobs, seconds, interrupted, options, reports, amilab_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                info.kind, key, info.name, iso(info.started), iso(info.ended), info.host,
                info.home, json.dumps(info.workers or workers_of(cells)), info.accelerator,
                info.jobs, round(info.ended - info.started, 3), int(info.interrupted),
                json.dumps(options, sort_keys=True, default=str), json.dumps(info.reports),
                _version(),
            ),
        ).fetchone()[0]  # fmt: skip
        marks = ", ".join("?" * len(CELL_COLUMNS.split(",")))
        db.executemany(
            f"INSERT INTO cells ({CELL_COLUMNS}) VALUES ({marks})",
            [_row(run_id, i, c, names) for i, c in enumerate(cells)],
        )
    return int(run_id)


def smoke_cells(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`smoke --record`: each smoke report as a matrix cell (its verdict, class and evidence
    by the matrix's own classifier)."""
    from harness.matrix.classify import Observed, classify

    out = []
    for r in reports:
        console = ""
        if r.get("ConsoleLog"):
            with contextlib.suppress(OSError):
                console = Path(r["ConsoleLog"]).read_text(errors="replace").replace("\r", "")
        v = classify(Observed(r, console))
        image = r.get("ImageName") or r.get("ImageId") or ""
        kernel = r.get("KernelId") or "own"
        out.append(
            {
                **r,
                "Cell": f"{image} × {kernel}",
                "Row": image,
                "Image": image,
                "Kernel": kernel,
                "Status": v.status,
                "Class": v.klass,
                "Evidence": [e.to_json() for e in v.evidence],
                "Attempts": [
                    {
                        "Status": v.status,
                        "Class": v.klass,
                        "InstanceId": r.get("InstanceId"),
                        "ConsoleLog": r.get("ConsoleLog"),
                        "Seconds": r.get("Seconds"),
                    }
                ],  # fmt: skip
            }
        )
    return out


def import_report(db: Database, path: Path, name: str = "") -> int:
    """`amilab results import REPORT.json`: a matrix JSON report, recorded as it was (a CI
    job that ran without the database, or runs from before it)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: not a matrix JSON report: {e}") from None
    cells = doc.get("Cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list) or not all(
        isinstance(c, dict) and "Cell" in c and "Status" in c for c in cells
    ):
        raise BadInput(f"{path}: not an `amilab matrix --json` report (Cells with Cell, Status)")
    seconds = float(doc.get("Seconds") or 0.0)
    started = _parse_time(doc.get("Started"))
    if started is None:  # a report from before runs said when they started
        started = path.stat().st_mtime - seconds
    ended = _parse_time(doc.get("Ended")) or started + seconds
    info = RunInfo(
        "import", name or str(path), started, ended, str(doc.get("Accelerator") or ""),
        int(doc.get("Jobs") or 1), bool(doc.get("Interrupted")), reports={"json": str(path)},
    )  # fmt: skip
    return write_run(db, info, cells)


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def now() -> float:
    return time.time()
