"""Executors run cells: each takes plain `Cell`s and returns `CellResult`s, calling back as
cells start and finish. `Executor.run` is the one loop that collects results (in the main
thread, so `done` never runs concurrently) and marks what did not finish not run; its
backends only submit: `LocalExecutor` runs cells on this machine in worker threads, at most
`jobs` guests at once, and `harness.matrix.fleet.DaskExecutor` as Dask tasks, both through
the same `run_cell(cell, settings)`.

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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

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


class Executor(ABC):
    """The one submit/collect loop; a backend says how cells are submitted, how their results
    come back, and what an interrupt must wait for."""

    results: list[CellResult]

    def run(
        self,
        cells: list[Cell],
        settings: RunSettings,
        started: Callable[[Cell], None],
        done: Callable[[CellResult], None],
    ) -> list[CellResult]:
        """Every cell's result in the order of `cells`; unfinished ones marked not run
        (also in `self.results` when an interrupt ends the run)."""
        self.results = []
        if not cells:
            return []
        results: dict[int, CellResult] = {}
        try:
            for i, result in self._submit(cells, settings, started):
                results[i] = result
                done(result)
        except KeyboardInterrupt:
            for i, result in self._interrupted():
                results[i] = result
                done(result)
            raise
        finally:
            self.results = [
                results[i] if i in results else CellResult(cell, not_run=True)
                for i, cell in enumerate(cells)
            ]
            self._finish()
        return self.results

    @abstractmethod
    def _submit(
        self, cells: list[Cell], settings: RunSettings, started: Callable[[Cell], None]
    ) -> Iterator[tuple[int, CellResult]]:
        """Run the cells, calling `started` as each begins; yield (index, result) as each
        ends, and return once none is left to end."""

    @abstractmethod
    def _interrupted(self) -> Iterable[tuple[int, CellResult]]:
        """After Ctrl-C: stop what runs and wait for its cleanups; the results of cells
        that still ended meanwhile."""

    @abstractmethod
    def _finish(self) -> None:
        """Whatever ended the run: let go of what `_submit` took."""

    @abstractmethod
    def cancel(self) -> None: ...


class LocalExecutor(Executor):
    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self.results = []
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, Instance] = {}  # cell key -> its current attempt's instance
        self._ended: queue.Queue[tuple[int, CellResult]] = queue.Queue()
        self._all_ended = threading.Event()
        self._started = False  # whether every worker thread was started

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

    def _submit(
        self, cells: list[Cell], settings: RunSettings, started: Callable[[Cell], None]
    ) -> Iterator[tuple[int, CellResult]]:
        settings = replace(settings, tcg_thread=order.tcg_thread(self.jobs))
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(cells)):
            todo.put(i)
        self._ended = queue.Queue()
        self._all_ended = threading.Event()
        self._started = False
        ended: list[str] = []

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
                    self._ended.put((i, result))
            finally:
                process.thread_done()
                with self._lock:
                    ended.append(threading.current_thread().name)
                    if len(ended) == len(threads):
                        self._all_ended.set()

        threads = [
            threading.Thread(target=worker, name=f"cell-{n}", daemon=True)
            for n in range(min(self.jobs, len(cells)))
        ]
        for t in threads:
            t.start()
        self._started = True
        while True:
            try:  # with a timeout, so that the main thread takes signals
                item = self._ended.get(timeout=0.2)
            except queue.Empty:
                # a worker puts its last result before it counts itself ended
                if self._all_ended.is_set() and self._ended.empty():
                    return
                continue
            yield item

    def _interrupted(self) -> list[tuple[int, CellResult]]:
        if not self._started:  # interrupted while starting the workers: none to wait for
            self.cancel()
            return []
        # again while waiting: a guest may have been starting when the first kill ran
        _wait(self._all_ended, interruptible=False, tick=self.cancel)
        late = []
        while not self._ended.empty():
            late.append(self._ended.get_nowait())
        return late

    def _finish(self) -> None:
        """Nothing held: the workers are threads that end by themselves."""


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
