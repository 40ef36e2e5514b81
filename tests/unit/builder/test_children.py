"""A helper started through `ending_with_us` is SIGKILLed with the process that started it,
even when that process itself is SIGKILLed (a killed build's tar must not go on writing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from builder.children import ending_with_us
from builder.pids import same_process
from tests.conftest import ROOT

PARENT = """
import subprocess, sys, time
from builder.children import ending_with_us
from builder.pids import same_process
child = subprocess.Popen(ending_with_us(["sleep", "300"]))
print(child.pid, flush=True)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    return same_process(pid, None)  # a zombie (killed, not yet reaped) is not running


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_the_helper_dies_with_a_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        # setpriv sets the parent-death signal and then execs sleep: killing the parent
        # before that would test nothing (the signal is never armed), so wait for the exec
        deadline = time.monotonic() + 30
        while _comm(child) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _comm(child) == "sleep"
        assert _running(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30  # a bound for a loaded host, not a speed check
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child), f"sleep {child} outlived its killed parent"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


def test_the_argv_is_kept() -> None:
    assert ending_with_us(["tar", "-xf", "x"])[-3:] == ["tar", "-xf", "x"]
