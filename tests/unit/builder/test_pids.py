"""pid_alive: the one liveness check behind stale instance directories and store tasks."""

from __future__ import annotations

import os
import subprocess

from builder.pids import pid_alive


def test_a_running_process_is_alive() -> None:
    assert pid_alive(os.getpid())


def test_a_reaped_child_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its PID names no process until the kernel reuses it
    assert not pid_alive(child.pid)
