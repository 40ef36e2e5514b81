"""One cell, run to its result: a smoke run on a fresh instance, classified, retried on ERROR.

`run_cell(cell, settings)` is the whole contract an executor needs: a plain, picklable
description in, a `CellResult` out. `hooks` (optional) let a local executor see each
attempt's instance, so it can stop that QEMU when the run is interrupted, and ask whether
the run was cancelled; a remote executor passes none.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from builder.errors import AmilabError
from builder.images.registry import Registry
from harness.launch.accel import Accelerator
from harness.launch.steps import Instance
from harness.matrix import known
from harness.matrix.cells import Cell
from harness.matrix.classify import Observed, classify, excerpt
from harness.matrix.results import ERROR, Attempt, CellResult


@dataclass(frozen=True)
class RunSettings:
    """What every cell of a run shares (picklable, like the cells)."""

    accelerator: str = "tcg"
    accelerator_reason: str = ""
    ssh_timeout: float = 300.0
    retries: int = 1  # further attempts of a cell that ended in ERROR
    keep: bool = False
    known_issues: tuple[known.KnownIssue, ...] = ()
    run_started: float = 0.0  # the run's start (time.time(): a worker's clock is comparable)
    tcg_thread: str = "multi"  # set by the host that runs the cells (`order.tcg_thread`)


class Hooks(Protocol):
    def attempt_started(self, cell: Cell, inst: Instance) -> None: ...

    def cancelled(self) -> bool: ...


# colour and cursor escapes (systemd's status lines): evidence is read as text; removing
# them leaves the line count, so line numbers still point into the log
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _console(report: dict) -> str:
    path = report.get("ConsoleLog")
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return _ESCAPES.sub("", text.replace("\r", ""))


def run_attempt(cell: Cell, settings: RunSettings, hooks: Hooks | None = None) -> Attempt:
    from harness.smoke.run import SmokeRequest, smoke_instance

    t0 = time.monotonic()
    opts = cell.option_dict
    report: dict = {}
    error = ""
    try:
        image = Registry().find(cell.image_id, "machine")
        req = SmokeRequest(
            ramdisk=opts.get("ramdisk"),
            firmware=opts.get("firmware"),
            disk_bus=opts.get("disk_bus", "virtio"),
            instance_type=opts.get("instance_type"),
            http_tokens=opts.get("http_tokens"),
            ssh_timeout=settings.ssh_timeout,
            keep=settings.keep,
            accel=settings.accelerator,
            json=True,
        )
        chosen = Accelerator(settings.accelerator, settings.accelerator_reason, settings.tcg_thread)
        started = (lambda inst: hooks.attempt_started(cell, inst)) if hooks else None
        result = smoke_instance(image, cell.kernel_ref, req, chosen, lambda _: None, started)
        report = result.to_json()
    except AmilabError as e:  # QEMU did not start, a tool is missing: the host's side
        error = str(e).splitlines()[0]
    except Exception as e:  # noqa: BLE001 - one cell's harness bug must not end the run
        error = f"{type(e).__name__}: {e}"
    console = _console(report)
    verdict = classify(Observed(report, console, error=error))
    verdict = known.apply(list(settings.known_issues), verdict, console)
    return Attempt(
        verdict, report, round(time.monotonic() - t0, 2), excerpt(console, verdict.evidence)
    )


def run_cell(cell: Cell, settings: RunSettings, hooks: Hooks | None = None) -> CellResult:
    """Attempts until one is not an ERROR or the retries are spent; a pass after an ERROR
    is flaky (CellResult.flaky)."""
    result = CellResult(cell)
    if settings.run_started:
        result.started = max(0.0, time.time() - settings.run_started)
    t0 = time.monotonic()
    for _ in range(1 + max(0, settings.retries)):
        attempt = run_attempt(cell, settings, hooks)
        if hooks is not None and hooks.cancelled():
            result.not_run = True  # stopped from outside: its verdict says nothing
            result.attempts.append(attempt)
            break
        result.attempts.append(attempt)
        if attempt.verdict.status != ERROR:
            break
    result.seconds = round(time.monotonic() - t0, 2)
    return result
