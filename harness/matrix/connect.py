"""Where the Dask executor's cells run: an embedded `LocalCluster` sized by the VM budget
(the default), or a running `dask scheduler` at `--scheduler ADDRESS`.

Anyone who can reach a scheduler can run code on its workers, so a scheduler that is not on
a loopback address is reached only over TLS with a client certificate (Dask's `Security`:
both sides prove themselves against the CA); plain TCP is accepted on loopback alone.
Before a cell is submitted every worker is asked for its facts: one without amilab (the
facts function does not unpickle there), without QEMU, or without a working accelerator,
or no worker with `VM` slots at all, ends the run with exit 3 and one line saying which.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BadInput, EnvironmentProblem

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_address(address: str, tls: Tls | None) -> str:
    """The scheduler address with its protocol; BadInput (exit 2) for plain TCP to a host
    that is not loopback, or TLS without its three files."""
    from distributed.comm import parse_address, parse_host_port

    where = f"--scheduler {address}"
    full = address if "://" in address else f"{'tls' if tls else 'tcp'}://{address}"
    try:
        proto, loc = parse_address(full)
        host, _ = parse_host_port(loc)
    except ValueError as e:
        raise BadInput(f"{where}: not a scheduler address ({e})") from None
    if proto not in ("tcp", "tls"):
        raise BadInput(f"{where}: protocol {proto!r}; expected tcp:// (loopback) or tls://")
    if proto == "tls" and tls is None:
        raise BadInput(f"{where}: tls:// needs --tls-ca, --tls-cert and --tls-key")
    if proto == "tcp" and tls is not None:
        raise BadInput(f"{where}: --tls-* given for a plain tcp:// address; use tls://")
    if proto == "tcp" and not _is_loopback(host):
        raise BadInput(
            f"{where}: plain TCP is accepted only on loopback addresses (anyone who reaches "
            "the scheduler runs code on its workers); use tls:// with --tls-ca/--tls-cert/--tls-key"
        )
    if tls is not None:
        for flag, path in (("--tls-ca", tls.ca), ("--tls-cert", tls.cert), ("--tls-key", tls.key)):
            if not path.is_file():
                raise BadInput(f"{flag} {path}: no such file")
    return full


def security(tls: Tls | None) -> Any:
    if tls is None:
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=str(tls.ca),
        tls_client_cert=str(tls.cert),
        tls_client_key=str(tls.key),
        require_encryption=True,
    )


def quiet() -> None:
    """Dask's own log lines (a worker lost, a task rescheduled) are the report's to tell."""
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def local_cluster(jobs: int, vcpus: int) -> tuple[Any, Any]:
    """One in-process worker with `jobs` threads and VM slots, and the machine's vCPU budget
    as its `CPU` resource (harness.matrix.order): no interpreter to start and nothing to
    pickle across processes, so the embedded run costs little over threads. Its memory
    limit is off: guests are QEMU processes Dask does not count (the VM slots are the
    cap)."""
    import dask
    from distributed import Client, LocalCluster

    # The worker's statistical profiler samples every running task's stack each 10 ms; a
    # cell's task is Python waiting on a guest for a minute, and its samples cost the run
    # about a CPU second per cell, taken from the guests beside it (measured: one cell,
    # amilab's own CPU 3.06 s with it, 2.04 s without).
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=jobs,
            processes=False,
            resources={"VM": jobs, "CPU": vcpus},
            memory_limit=0,
            dashboard_address=":0",  # its HTTP server on a free port: 8787 may be taken
            silence_logs=logging.CRITICAL,
        )
    return cluster, Client(cluster)


def connect(address: str, tls: Tls | None) -> Any:
    from distributed import Client

    try:
        return Client(address, security=security(tls), timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise EnvironmentProblem(
            f"scheduler at {address} unreachable: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def check_workers(client: Any, requested_accel: str, address: str) -> list[dict[str, Any]]:
    """Every worker's facts (harness.matrix.worker.worker_facts); EnvironmentProblem naming
    the first worker that cannot run cells."""
    from harness.matrix.worker import worker_facts

    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError):
        raise EnvironmentProblem(f"scheduler at {address} has no workers") from None
    answers = client.run(worker_facts, requested_accel, on_error="return")
    facts = []
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            text = str(answer).splitlines()[0] if str(answer) else type(answer).__name__
            if isinstance(answer, ModuleNotFoundError | ImportError) or "No module" in text:
                raise EnvironmentProblem(f"worker {worker}: amilab is not installed ({text})")
            raise EnvironmentProblem(f"worker {worker}: cannot run amilab ({text})")
        if answer["Problem"]:
            raise EnvironmentProblem(f"worker {worker}: {answer['Problem']}")
        facts.append(answer)
    info = client.scheduler_info(n_workers=-1)["workers"]
    if not any(w.get("resources", {}).get("VM", 0) > 0 for w in info.values()):
        raise EnvironmentProblem(
            f"no worker of {address} has VM slots: start them with --resources VM=N"
        )
    return facts
