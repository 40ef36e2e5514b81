"""The local executor: at most `jobs` cells at once, results in the cells' order, and an
interrupt that stops the rest and marks them not run. The VM budget from cores and memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from harness.matrix import executor as ex
from harness.matrix.cell_run import RunSettings
from harness.matrix.cells import Cell
from harness.matrix.results import PASS, Attempt, CellResult, Verdict


def test_budget_from_cores_and_memory() -> None:
    assert ex.default_jobs(cores=2, available_mib=23000) == 2
    assert ex.default_jobs(cores=16, available_mib=4 * ex.GUEST_MIB + ex.RESERVE_MIB) == 4
    assert ex.default_jobs(cores=8, available_mib=100) == 1
    assert ex.default_jobs() >= 1


def test_runs_at_most_jobs_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    lock = threading.Lock()
    now, peak = 0, 0

    def fake_cell(cell: Cell, settings: RunSettings, hooks: object) -> CellResult:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.05)
        with lock:
            now -= 1
        return CellResult(cell, [Attempt(Verdict(PASS))])

    monkeypatch.setattr(ex, "run_cell", fake_cell)
    cells = [Cell(f"img{i}", "own") for i in range(7)]
    started, done = [], []
    out = ex.LocalExecutor(3).run(cells, RunSettings(), started.append, done.append)
    assert [r.cell for r in out] == cells and all(r.status == PASS for r in out)
    assert peak == 3 and len(started) == len(done) == 7


def test_interrupt_marks_the_rest_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    first = threading.Event()

    def fake_cell(cell: Cell, settings: RunSettings, hooks: ex.LocalExecutor) -> CellResult:
        first.set()
        while not hooks.cancelled():  # a guest that would run for long
            time.sleep(0.01)
        return CellResult(cell, [Attempt(Verdict(PASS))], not_run=True)

    monkeypatch.setattr(ex, "run_cell", fake_cell)
    e = ex.LocalExecutor(1)
    cells = [Cell("a", "own"), Cell("b", "own")]

    def started(cell: Cell) -> None:
        if cell.image == "a":
            threading.Thread(target=lambda: (first.wait(), e.cancel())).start()

    out = e.run(cells, RunSettings(), started, lambda r: None)
    assert [r.not_run for r in out] == [True, True]
    assert e.results == out


def test_the_shared_loop_keeps_late_results_and_always_finishes() -> None:
    """Executor.run for any backend: results in the cells' order, those that ended during
    an interrupt kept, the rest not run, and the backend let go of whatever ended the run."""
    cells = [Cell(x, "own") for x in "abc"]

    class Backend(ex.Executor):
        finished = False

        def _submit(
            self, cells: list[Cell], settings: RunSettings, started: Callable[[Cell], None]
        ) -> Iterator[tuple[int, CellResult]]:
            started(cells[1])
            yield 1, CellResult(cells[1], [Attempt(Verdict(PASS))])
            raise KeyboardInterrupt

        def _interrupted(self) -> list[tuple[int, CellResult]]:
            return [(0, CellResult(cells[0], [Attempt(Verdict(PASS))]))]

        def _finish(self) -> None:
            self.finished = True

        def cancel(self) -> None: ...

    b = Backend()
    done: list[CellResult] = []
    with pytest.raises(KeyboardInterrupt):
        b.run(cells, RunSettings(), lambda c: None, done.append)
    assert [r.cell.image for r in done] == ["b", "a"]
    assert [r.not_run for r in b.results] == [False, False, True] and b.finished
