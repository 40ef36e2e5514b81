"""Executors run cells: each takes plain `Cell`s and returns `CellResult`s, calling back as
cells start and finish. `LocalExecutor` runs them on this machine in worker threads, at
most `jobs` guests at once; a fleet executor (Dask) can stand beside it, submitting the
same `run_cell(cell, settings)`.

Why threads: a cell's harness side is mostly waiting (console polls, SSH), so threads cost
no interpreter start per cell and share the imported harness. QEMU is tied to the thread
that started it (PR_SET_PDEATHSIG), so each worker is declared lasting
(`harness.launch.process.lasting_thread`) and lives until its QEMUs are stopped; a SIGKILL of
amilab still takes every QEMU with it.

Interrupting (Ctrl-C, SIGTERM in the main thread): `cancel()` stops new cells, kills the
running guests' QEMUs (their pipelines then unwind through the usual cleanups), and waits
for the workers; cells that did not finish are marked not run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from harness.launch import process
from harness.launch.steps import Instance
from harness.matrix import order
from harness.matrix.cell_run import RunSettings, run_cell
from harness.matrix.cells import Cell
from harness.matrix.results import CellResult

GUEST_MIB = 1024 + 384  # layers/base.ini's memory plus QEMU's own (TCG's translation cache)
RESERVE_MIB = 1024  # left for the host and the harness


def default_jobs(cores: int | None = None, available_mib: int | None = None) -> int:
    """The VM budget: one guest per core (a TCG guest keeps about one core busy) and no
    more than free memory holds."""
    cores = cores or os.cpu_count() or 1
    if available_mib is None:
        available_mib = _mem_available_mib()
    by_memory = max(1, (available_mib - RESERVE_MIB) // GUEST_MIB)
    return max(1, min(cores, by_memory))


def _mem_available_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return GUEST_MIB + RESERVE_MIB


class Executor(Protocol):
    def run(
        self,
        cells: list[Cell],
        settings: RunSettings,
        started: Callable[[Cell], None],
        done: Callable[[CellResult], None],
    ) -> list[CellResult]:
        """Every cell's result in the order of `cells`; unfinished ones marked not run."""
        ...

    def cancel(self) -> None: ...


class LocalExecutor:
    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, Instance] = {}  # cell key -> its current attempt's instance

    # Hooks (harness.matrix.cell_run)
    def attempt_started(self, cell: Cell, inst: Instance) -> None:
        with self._lock:
            self._running[cell.key] = inst

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            running = list(self._running.values())
        for inst in running:
            for proc in (inst.qemu, inst.net):
                pid = proc.pid if proc is not None else None
                if pid is not None and proc is not None and proc.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # the worker's cleanup reaps it

    def run(
        self,
        cells: list[Cell],
        settings: RunSettings,
        started: Callable[[Cell], None],
        done: Callable[[CellResult], None],
    ) -> list[CellResult]:
        if not cells:
            return []
        settings = replace(settings, tcg_thread=order.tcg_thread(self.jobs))
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(cells)):
            todo.put(i)
        results: dict[int, CellResult] = {}

        def worker() -> None:
            process.lasting_thread()
            try:
                while not self._cancel.is_set():
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    started(cells[i])
                    result = run_cell(cells[i], settings, self)
                    with self._lock:
                        self._running.pop(cells[i].key, None)
                        results[i] = result
                    done(result)
            finally:
                process.thread_done()
                with self._lock:
                    ended.append(threading.current_thread().name)
                    if len(ended) == len(threads):
                        all_ended.set()

        ended: list[str] = []
        all_ended = threading.Event()
        threads = [
            threading.Thread(target=worker, name=f"cell-{n}", daemon=True)
            for n in range(min(self.jobs, len(cells)))
        ]
        for t in threads:
            t.start()
        try:
            _wait(all_ended)
        except KeyboardInterrupt:
            # again while waiting: a guest may have been starting when the first kill ran
            _wait(all_ended, interruptible=False, tick=self.cancel)
            raise
        finally:
            self._fill_not_run(cells, results)
            self.results = [results[i] for i in range(len(cells))]
        return self.results

    @staticmethod
    def _fill_not_run(cells: list[Cell], results: dict[int, CellResult]) -> None:
        for i, cell in enumerate(cells):
            if i not in results:
                results[i] = CellResult(cell, not_run=True)


def _wait(
    done: threading.Event, interruptible: bool = True, tick: Callable[[], None] = lambda: None
) -> None:
    """Wait for the workers' end. Not `Thread.join`: a KeyboardInterrupt that lands inside
    join(timeout) can leave the thread marked stopped while it still runs (seen here on
    3.11), and the run would then exit without the cells' cleanups. An Event's wait has no
    such state; the timeout lets the main thread take signals."""
    while True:
        tick()
        try:
            if done.wait(0.2):
                return
        except KeyboardInterrupt:
            if interruptible:
                raise
