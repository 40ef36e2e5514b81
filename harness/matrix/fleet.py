"""The Dask executor: the matrix's cells as Dask tasks, on the embedded `LocalCluster` (the
default of `amilab matrix`) or on a running scheduler's workers (`--scheduler`).

Each cell is one task asking for one `VM` slot (Dask counts a worker's own memory, not its
guests', so the slots are what keep a host from running too many). A task carries the cell,
the run's settings and, with `--artifacts`, references to the files it needs, never their
bytes. Its start is an event (shown as running, and remembered): when a worker dies
mid-cell, Dask runs the task again elsewhere, and the attempt that was lost with the worker
is added to the cell's attempts, so each cell is reported once with that noted. A cell whose
workers kept dying ends as ERROR once Dask gives up (KilledWorker).

Ctrl-C or SIGTERM cancels the futures: the worker plugin kills the guests of cells that were
running (harness.matrix.worker), the cells not finished are reported as not run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import AmilabError
from builder.images.registry import Registry
from harness.launch.instance import instance_logs
from harness.launch.plan import make_plan
from harness.matrix import artifacts, connect, order
from harness.matrix.cell_run import RunSettings
from harness.matrix.cells import Cell
from harness.matrix.executor import Executor
from harness.matrix.results import ERROR, Attempt, CellResult, Evidence, Verdict
from harness.matrix.worker import (
    PLUGIN,
    RUNNING,
    TOPIC,
    AmilabPlugin,
    error_result,
    worker_accelerator,
)

LOST = "worker lost"
_RUNS = itertools.count()
CANCEL_WAIT = 8.0  # seconds the embedded run waits for its cancelled cells' cleanups


class DaskExecutor(Executor):
    def __init__(
        self,
        jobs: int,
        *,
        scheduler: str | None = None,
        tls: connect.Tls | None = None,
        artifacts_at: str | None = None,
        endpoint_url: str | None = None,
        accel: str = "auto",
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.jobs = max(1, jobs)
        self.scheduler = scheduler
        self.tls = tls
        self.artifacts_at = artifacts_at
        self.endpoint_url = endpoint_url
        self.accel = accel
        self.say = say
        self.results: list[CellResult] = []
        self.workers: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._starts: dict[str, list[tuple[str, str]]] = {}  # task key -> (token, worker)
        self._client: Any = None
        self._cluster: Any = None
        self._futures: list[Any] = []
        self._vcpus = 0  # the embedded worker's vCPU budget, once open
        self._count_vcpus = True  # whether its cells hold that budget by their vCPUs

    @property
    def slots(self) -> int:
        if self.scheduler is None:
            return self.jobs
        return sum(int(f.get("Slots") or 0) for f in self.workers) or self.jobs

    @property
    def vcpus(self) -> int | None:
        """The embedded worker's vCPU budget once open; None for a scheduler's workers, and
        where cells do not hold it by their vCPUs (`order.counts_vcpus`)."""
        embedded = self.scheduler is None and self._count_vcpus
        return self._vcpus if embedded and self._vcpus else None

    def cancel(self) -> None:
        if self._client is not None and self._futures:
            with contextlib.suppress(Exception):
                self._client.cancel(self._futures, reason="amilab matrix interrupted")

    def open(self) -> None:
        """Start the embedded cluster or connect to the scheduler, and check its workers:
        done before anything is built, so a scheduler that cannot run cells ends the run
        at once (exit 3)."""
        if self._client is not None:
            return
        connect.quiet()
        if self.scheduler is None:
            try:
                chosen = worker_accelerator(self.accel).name  # probed once: cells reuse it
            except AmilabError:
                chosen = "unusable"  # check_workers below says why, as for any worker
            self._vcpus = order.vcpu_budget(os.cpu_count() or 1, chosen, self.jobs)
            self._count_vcpus = order.counts_vcpus(chosen, self.jobs)
            self._cluster, self._client = connect.local_cluster(self.jobs, self._vcpus)
        else:
            address = connect.check_address(self.scheduler, self.tls)
            self._client = connect.connect(address, self.tls)
        try:
            where = self.scheduler or "the embedded cluster"
            self.workers = connect.check_workers(self._client, self.accel, where)
            self._client.register_plugin(AmilabPlugin(), name=PLUGIN)
        except BaseException:
            self.close()
            raise
        if self.scheduler is not None:
            for f in self.workers:
                self.say(
                    f"worker {f['Address']} on {f['Host']}: {f['Accelerator']}, "
                    f"{f['Slots']} VM slots"
                )

    def close(self) -> None:
        self._futures = []
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close(timeout=5)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close(timeout=5)
        self._client = self._cluster = None

    def _submit(
        self, cells: list[Cell], settings: RunSettings, started: Callable[[Cell], None]
    ) -> Iterator[tuple[int, CellResult]]:
        self.open()
        client = self._client
        needed = self._needed(cells)
        if needed:
            n = artifacts.upload([x for x in needed if x is not None], self.say)
            self.say(f"artifacts at {self.artifacts_at}: {n} uploaded")
        run_id = f"amilab-{int(time.time() * 1000):x}-{next(_RUNS)}"
        keys = [f"{run_id}-cell-{i}" for i in range(len(cells))]
        by_key = dict(zip(keys, range(len(cells)), strict=True))

        def on_start(event: tuple[float, dict[str, Any]]) -> None:
            msg = event[1]
            key = msg.get("key")
            if key not in by_key:
                return
            with self._lock:
                self._starts.setdefault(key, []).append((msg["token"], msg["worker"]))
            started(cells[by_key[key]])

        client.subscribe_topic(TOPIC, on_start)
        home = str(paths.amilab_home())
        cores = self._cores()
        self._futures = [
            client.submit(
                _task(),
                key,
                cell,
                settings,
                self.accel,
                needed[i] if needed else None,
                home,
                key=key,
                resources=_resources(cell, cores),
                pure=False,
                # the cells come longest first (harness.matrix.order): keep that order
                priority=len(cells) - i,
            )  # fmt: skip
            for i, (key, cell) in enumerate(zip(keys, cells, strict=True))
        ]
        from distributed import as_completed

        for fut in as_completed(self._futures):
            i = by_key[fut.key]
            yield i, self._collect(fut, cells[i])

    def _finish(self) -> None:
        self.close()

    def _cores(self) -> int | None:
        """The vCPUs a cell may hold (harness.matrix.order): the embedded worker's budget;
        for a scheduler's workers, the fewest any of them declares (`--resources "VM=N
        CPU=C"`), or None when one declares none (cells then ask for a VM slot only)."""
        if self.scheduler is None:
            return self.vcpus
        assert self._client is not None
        info = self._client.scheduler_info(n_workers=-1)["workers"].values()
        cpus = [w.get("resources", {}).get("CPU") for w in info]
        return int(min(cpus)) if cpus and all(cpus) else None

    def _interrupted(self) -> list[tuple[int, CellResult]]:
        """Cancel what runs (the plugin kills those guests); the embedded cluster's cells
        run in this process, so wait for their cleanups before it closes. Cancelled
        futures bring no results back."""
        self.cancel()
        if self.scheduler is None:
            deadline = time.monotonic() + CANCEL_WAIT
            while time.monotonic() < deadline:
                try:
                    if RUNNING.wait_idle(deadline - time.monotonic()):
                        break
                except KeyboardInterrupt:
                    RUNNING.kill_all()  # again: a guest may have been starting
        return []

    def _needed(self, cells: list[Cell]) -> list[artifacts.Needed | None]:
        """Per cell, the files its plan boots (planned as the worker will), when the run
        moves artifacts through a bucket or a shared directory."""
        if not self.artifacts_at:
            return []
        registry = Registry()
        out: list[artifacts.Needed | None] = []
        for cell in cells:
            image = registry.find(cell.image_id, "machine")
            opts = cell.option_dict
            plan = make_plan(
                image, cell.kernel_ref, opts.get("ramdisk"), opts.get("firmware"),
                disk_bus=opts.get("disk_bus", "virtio"), registry=registry,
            )  # fmt: skip
            out.append(
                artifacts.for_plan(
                    self.artifacts_at,
                    self.endpoint_url,
                    image,
                    plan.kernel,
                    plan.ramdisk,
                    plan.disk.path,
                )  # fmt: skip
            )
        return out

    def _collect(self, fut: Any, cell: Cell) -> CellResult:
        """The cell's result, with the attempts lost to dead workers before it."""
        with self._lock:
            starts = list(self._starts.get(fut.key, []))
        text = ""
        if fut.status == "finished":
            answer = fut.result()
            result: CellResult = answer["result"]
            token = answer["token"]
            self._bring_consoles(result, answer["consoles"])
        else:
            exc = fut.exception()
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            token = ""
            result = CellResult(cell)  # only the lost attempts, below
            if type(exc).__name__ != "KilledWorker":
                result = error_result(cell, f"the cell's task failed: {text}")
        lost = [
            Attempt(
                Verdict(ERROR, LOST, [Evidence(0, f"worker {w} died while running this cell")]),
                {"Worker": {"Address": w}},
            )
            for t, w in starts
            if t != token
        ]
        result.attempts = lost + result.attempts
        if not result.attempts:  # no start was seen: Dask gave up before any attempt began
            result = error_result(cell, f"every worker that ran it died ({text})", LOST)
        return result

    @staticmethod
    def _bring_consoles(result: CellResult, consoles: dict[str, str]) -> None:
        """A remote worker's console logs, kept here beside the client's own instances'."""
        if not consoles:
            return
        logs = instance_logs()
        logs.mkdir(parents=True, exist_ok=True)
        for attempt in result.attempts:
            remote = attempt.report.get("ConsoleLog")
            if remote in consoles:
                local = logs / Path(remote).name
                local.write_text(consoles[remote])
                attempt.report["ConsoleLog"] = str(local)
                attempt.report["WorkerConsoleLog"] = remote


def _resources(cell: Cell, cores: int | None) -> dict[str, int]:
    """One VM slot, and the cores the cell's guest has vCPUs for where workers count them."""
    if cores is None:
        return {"VM": 1}
    return {"VM": 1, "CPU": order.cores_held(cell, cores)}


def _task() -> Callable[..., Any]:
    from harness.matrix.worker import run_cell_task

    return run_cell_task
