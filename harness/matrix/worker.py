"""The worker side of the Dask executor: the task that runs one cell, and amilab's worker
plugin (registered by the client, or loaded with `dask worker --preload harness.matrix.worker`).

A running Dask task cannot be interrupted, so a cell that Dask cancels (the client's Ctrl-C,
`client.cancel`) is stopped by the plugin: when the task is released while it executes,
the cell's QEMU process groups are killed (and again every 0.2 s until the task ends, for
a guest that was starting at that moment); the cell's pipeline then unwinds through its
usual cleanups and its result is dropped. A guest dies with its worker too: QEMU is started
from the task's thread with PR_SET_PDEATHSIG (harness.launch.process), so a killed worker
process takes its guests with it.

The running cells are kept per process (not per plugin instance), so a plugin registered
again by another client, which replaces the old instance, loses nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from builder import paths
from builder.errors import AmilabError
from harness.launch import accel, process
from harness.launch.steps import Instance
from harness.matrix import order
from harness.matrix.artifacts import Needed, ensure_local
from harness.matrix.cell_run import RunSettings, run_cell
from harness.matrix.cells import Cell
from harness.matrix.results import ERROR, Attempt, CellResult, Evidence, Verdict

PLUGIN = "amilab"
TOPIC = "amilab-cell"  # start events: the client shows running cells and notes lost attempts
QEMU = "qemu-system-x86_64"


class _Running:
    """The cells running in this process: their instances, and which Dask cancelled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.instances: dict[str, Instance] = {}  # task key -> its current attempt's instance
        self.keys: set[str] = set()
        self.cancelled: set[str] = set()
        self.idle = threading.Condition(self.lock)

    def begin(self, key: str) -> None:
        with self.lock:
            self.keys.add(key)
            self.cancelled.discard(key)

    def end(self, key: str) -> None:
        with self.lock:
            self.keys.discard(key)
            self.instances.pop(key, None)
            self.cancelled.discard(key)
            self.idle.notify_all()

    def cancel(self, key: str) -> None:
        with self.lock:
            if key not in self.keys:
                return
            self.cancelled.add(key)
        self.kill(key)
        threading.Thread(target=self._keep_killing, args=(key,), daemon=True).start()

    def _keep_killing(self, key: str) -> None:
        while True:
            with self.lock:
                if key not in self.keys:
                    return
            self.kill(key)
            time.sleep(0.2)

    def kill(self, key: str) -> None:
        with self.lock:
            inst = self.instances.get(key)
        if inst is None:
            return
        for proc in (inst.qemu, inst.net):
            pid = proc.pid if proc is not None else None
            if pid is not None and proc is not None and proc.alive():
                # QEMU leads its own process group (process_group=0): the group is the guest
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    def kill_all(self) -> None:
        with self.lock:
            keys = list(self.keys)
        for key in keys:
            self.cancel(key)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.keys:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(min(left, 0.2))
        return True


RUNNING = _Running()


class AmilabPlugin(WorkerPlugin):
    """Stops a cell's guest when Dask releases its task, and every guest when the worker
    closes. (Its facts: `worker_facts`.)"""

    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start in ("executing", "long-running") and finish in ("released", "cancelled"):
            RUNNING.cancel(str(key))

    def teardown(self, worker: Any) -> None:
        status = str(getattr(worker, "status", ""))
        if "clos" in status.lower():  # the worker ends, not a re-registration of the plugin
            RUNNING.kill_all()


async def dask_setup(worker: Any) -> None:
    """`dask worker --preload harness.matrix.worker`: the plugin from the start."""
    await worker.plugin_add(AmilabPlugin(), name=PLUGIN)


_ACCEL: dict[str, accel.Accelerator] = {}
_ACCEL_LOCK = threading.Lock()


def worker_accelerator(requested: str) -> accel.Accelerator:
    """This host's accelerator, probed once per process (a host may have KVM, another not)."""
    with _ACCEL_LOCK:
        if requested not in _ACCEL:
            _ACCEL[requested] = accel.choose(requested)
        return _ACCEL[requested]


def worker_facts(requested: str = "auto", dask_worker: Any = None) -> dict[str, Any]:
    """What the client checks before it submits: amilab is importable (this function ran),
    QEMU is there, the accelerator works; and what the report says of each worker."""
    facts: dict[str, Any] = {
        "Address": getattr(dask_worker, "address", ""),
        "Host": socket.gethostname(),
        "Pid": os.getpid(),
        "AmilabHome": str(paths.amilab_home()),
        "Qemu": shutil.which(QEMU) or "",
        "Problem": "",
        "Slots": (getattr(getattr(dask_worker, "state", None), "total_resources", {}) or {}).get(
            "VM", 0
        ),
    }
    if not facts["Qemu"]:
        facts["Problem"] = f"{QEMU} not found on its PATH"
        return facts
    try:
        chosen = worker_accelerator(requested)
    except AmilabError as e:
        facts["Problem"] = str(e).splitlines()[0]
        return facts
    facts["Accelerator"], facts["AcceleratorReason"] = chosen.name, chosen.reason
    return facts


class _Hooks:
    def __init__(self, key: str) -> None:
        self.key = key

    def attempt_started(self, cell: Cell, inst: Instance) -> None:
        with RUNNING.lock:
            RUNNING.instances[self.key] = inst
            cancelled = self.key in RUNNING.cancelled
        if cancelled:
            RUNNING.kill(self.key)

    def cancelled(self) -> bool:
        with RUNNING.lock:
            return self.key in RUNNING.cancelled


def run_cell_task(
    key: str,
    cell: Cell,
    settings: RunSettings,
    requested_accel: str,
    needed: Needed | None,
    client_home: str,
) -> dict[str, Any]:
    """One cell on this worker: its artifacts first (downloaded once, registered under the
    client's IDs), then `run_cell`. Returns the result, this attempt's token (the start
    event carries it too), the worker's facts, and each attempt's console log when the
    client cannot read this worker's files."""
    worker = get_worker()
    token = uuid.uuid4().hex
    facts = worker_facts(requested_accel, worker)
    worker.log_event(TOPIC, {"key": key, "token": token, "worker": worker.address})
    RUNNING.begin(key)
    process.lasting_thread()  # QEMU's parent-death signal is tied to this thread
    try:
        if facts["Problem"]:
            result = error_result(cell, f"worker {worker.address}: {facts['Problem']}")
        else:
            if requested_accel == "auto" or settings.accelerator != facts["Accelerator"]:
                settings = replace(
                    settings,
                    accelerator=facts["Accelerator"],
                    accelerator_reason=facts["AcceleratorReason"],
                )
            slots = int(worker.state.total_resources.get("VM", 1))
            settings = replace(settings, tcg_thread=order.tcg_thread(slots))
            try:
                if needed is not None:
                    ensure_local(needed)
            except AmilabError as e:
                result = error_result(cell, f"worker {worker.address}: {e}")
            else:
                result = run_cell(cell, settings, _Hooks(key))
    finally:
        process.thread_done()
        RUNNING.end(key)
    worker_info = {
        "Address": worker.address,
        "Host": facts["Host"],
        "Accelerator": facts.get("Accelerator", ""),
        "AcceleratorReason": facts.get("AcceleratorReason", ""),
    }
    consoles: dict[str, str] = {}
    remote = str(paths.amilab_home()) != client_home
    for attempt in result.attempts:
        attempt.report["Worker"] = worker_info
        log = attempt.report.get("ConsoleLog")
        if remote and log:
            with contextlib.suppress(OSError):
                consoles[log] = Path(log).read_text(errors="replace")
    return {"result": result, "token": token, "worker": worker_info, "consoles": consoles}


def error_result(cell: Cell, why: str, klass: str = "worker error") -> CellResult:
    verdict = Verdict(ERROR, klass, [Evidence(0, why)])
    return CellResult(cell, [Attempt(verdict)])
