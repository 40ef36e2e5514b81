"""Whether a process recorded by an earlier run (an owner's PID file, a store task) still lives."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` names a process, ours or another user's (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours to signal
    return True


def process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot), which with the PID names one process
    for good: a PID reused by another process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def same_process(pid: int | None, start: int | None) -> bool:
    """Whether the process that `pid` and `start` (from `process_start`) named still runs."""
    if not pid:
        return False
    now = process_start(pid)
    if now is None:
        return False
    try:  # a zombie (exited, not yet reaped) is no longer running anything
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return start is None or now == start
