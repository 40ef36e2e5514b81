"""Helpers for integration tests that run real builds through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import AMILAB, ROOT, run_amilab

SMOKE_TIMEOUT = 900  # a whole smoke on a loaded CI machine, far above the ~20 s it takes idle


def build(recipe: Path, home: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    result = run_amilab(
        "build", str(recipe), "--json", *extra, env={"AMILAB_HOME": str(home), **(env or {})}
    )
    assert result.returncode == 0, f"build failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def debian_pv(home: Path) -> dict:
    """The default paravirtual image (build.yaml's debian-pv) built in `home`: its AMI."""
    images = build(ROOT / "build.yaml", home, "--image", "debian-pv")["Images"]
    return next(i for i in images if i["VirtualizationType"] == "paravirtual")


def interrupt_build(
    recipe: Path,
    env: dict[str, str],
    started: Callable[[], bool],
    timeout: float,
    while_running: Callable[[], None] = lambda: None,
) -> None:
    """`amilab build RECIPE` in a session of its own, interrupted the way Ctrl-C in a terminal
    does (SIGINT to its whole process group) once `started()` says the element script is
    running; it must exit 130 without a traceback. `while_running` checks just before."""
    proc = subprocess.Popen(
        [*AMILAB, "build", str(recipe)],
        cwd=ROOT,
        env={**os.environ, **env},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a test run started in the background inherits SIGINT ignored; a terminal's is not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout
    while not started():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the element script never started"
        time.sleep(0.2)
    while_running()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "Traceback" not in err.decode()


def smoke(
    env: dict[str, str], *args: str, timeout: float = SMOKE_TIMEOUT
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`amilab smoke ARGS --json` with `env`: the process and its JSON report."""
    result = run_amilab("smoke", *args, "--json", env=env, timeout=timeout)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report:\n{result.stdout}\n{result.stderr}") from None
    return result, report


def checks(report: dict) -> dict[str, dict]:
    """A smoke report's checks by name."""
    return {c["Name"]: c for c in report["Checks"]}


def images(home: Path, image_type: str | None = None) -> list[dict]:
    args = ["images", "--json"] + (["--type", image_type] if image_type else [])
    result = run_amilab(*args, env={"AMILAB_HOME": str(home)}, check=True)
    return json.loads(result.stdout)["Images"]


def debugfs(disk: str, request: str, offset: int = 0) -> str:
    """Read a disk without mounting it (offset for a partition's filesystem)."""
    target = f"{disk}?offset={offset}" if offset else disk
    result = subprocess.run(
        ["debugfs", "-R", request, target], capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr


def exists(disk: str, path: str, offset: int = 0) -> bool:
    out = debugfs(disk, f"stat {path}", offset)
    return "Inode:" in out and "File not found" not in out
