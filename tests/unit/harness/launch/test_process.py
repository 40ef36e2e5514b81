"""No child outlives the harness, even when the harness gets SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.launch.process import QemuProcess

ROOT = Path(__file__).resolve().parents[4]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie is gone for our purposes: reap it if it is ours, else check its state
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            if state == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_child_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    """The harness stand-in starts a long `sleep` as its "QEMU", reports its PID, and is
    killed with SIGKILL: PR_SET_PDEATHSIG must take the child down within 5 s."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from harness.launch.process import QemuProcess
        q = QemuProcess(["sleep", "1000"], Path({str(tmp_path)!r}), Path({str(tmp_path / "err")!r}))
        q.start()
        print(q.pid, flush=True)
        time.sleep(1000)
        """
    )
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert harness.stdout is not None
    child = int(harness.stdout.readline())
    os.kill(harness.pid, signal.SIGKILL)
    harness.wait()
    assert _gone(child, 5.0), "the child outlived its SIGKILLed parent"


def test_stop_kills_what_does_not_answer_qmp(tmp_path: Path) -> None:
    q = QemuProcess(["sleep", "1000"], tmp_path, tmp_path / "err")
    q.start()
    t0 = time.monotonic()
    q.stop(tmp_path / "no-such.sock", timeout=0.5)
    assert not q.alive() and time.monotonic() - t0 < 5


def test_own_process_group(tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to the foreground group: QEMU must not be in it."""
    q = QemuProcess(["sleep", "1000"], tmp_path, tmp_path / "err")
    q.start()
    try:
        assert q.pid is not None and os.getpgid(q.pid) == q.pid != os.getpgid(0)
    finally:
        q.kill()


def test_missing_qemu_is_an_environment_problem(tmp_path: Path) -> None:
    from builder.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem):
        QemuProcess(["/nonexistent/qemu"], tmp_path, tmp_path / "err").start()
