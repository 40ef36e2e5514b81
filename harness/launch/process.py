"""The QEMU process of one instance: start it tied to the harness, stop it for sure.

No QEMU may outlive the harness, whatever ends the harness:
- exceptions, timeouts, Ctrl-C and SIGTERM: the launch pipeline's cleanup calls `stop()`
  (QMP `quit`, then SIGKILL after a timeout);
- SIGKILL of the harness, which runs no cleanup: the kernel kills QEMU, because QEMU is
  started with PR_SET_PDEATHSIG. That signal fires when the *thread* that forked QEMU ends,
  so QEMU must be started from a thread that lives as long as the harness: the main thread,
  or a worker thread marked with `lasting_thread()` that ends only after its QEMUs are
  stopped (the matrix's cell workers, which live until the run is over).
QEMU runs in its own process group so a terminal's Ctrl-C reaches only the harness, which
then shuts QEMU down in order instead of racing it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from builder.errors import EnvironmentProblem
from builder.sockets import unix_path

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls it


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


_LASTING: set[int] = set()


def lasting_thread() -> None:
    """Declare the calling thread one that outlives every QEMU it starts (it stops them
    before it ends), so QEMU may be started from it; `thread_done()` when it ends."""
    _LASTING.add(threading.get_ident())


def thread_done() -> None:
    _LASTING.discard(threading.get_ident())


class QemuProcess:
    def __init__(self, argv: list[str], workdir: Path, stderr_log: Path) -> None:
        self.argv = argv
        self.workdir = workdir
        self.stderr_log = stderr_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._qmp: QEMUMonitorProtocol | None = None

    def start(self, env: dict[str, str] | None = None, interactive: bool = False) -> None:
        here = threading.current_thread()
        if here is not threading.main_thread() and threading.get_ident() not in _LASTING:
            # PR_SET_PDEATHSIG would kill QEMU as soon as this thread ends
            raise RuntimeError("QEMU must be started from the main thread")
        parent = os.getpid()
        run_env = dict(os.environ if env is None else env)
        # snapshot=on's temporary overlay goes into the instance directory, removed with it
        run_env["TMPDIR"] = str(self.workdir)
        with open(self.stderr_log, "wb") as err:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    cwd=self.workdir,
                    env=run_env,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    preexec_fn=lambda: _die_with_parent(parent),
                    process_group=0,
                )
            except FileNotFoundError:
                raise EnvironmentProblem(f"{self.argv[0]} not found") from None
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def cpu_seconds(self) -> float | None:
        """CPU time QEMU has used so far (all threads, user + system). Unlike wall time it
        hardly depends on what else the machine runs, so boots compare on a busy host too."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return round(ticks / os.sysconf("SC_CLK_TCK"), 2)

    def stderr_tail(self, lines: int = 10) -> str:
        try:
            text = self.stderr_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def qmp(self, socket_path: Path, timeout: float = 10.0) -> QEMUMonitorProtocol:
        """Connect to QMP (QEMU creates the socket a moment after starting)."""
        if self._qmp is not None:
            return self._qmp
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(unix_path(socket_path))
                break
            except OSError:
                sock.close()
                if not self.alive() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        mon = QEMUMonitorProtocol(sock)
        mon.settimeout(timeout)
        mon.connect()
        self._qmp = mon
        return mon

    def stop(self, qmp_socket: Path | None, timeout: float = 5.0, powerdown: bool = False) -> None:
        """QMP `system_powerdown` (if asked, waiting `timeout` for the guest) or `quit`, then
        SIGKILL if QEMU is still there after `timeout`. Never raises for a QEMU already gone."""
        if self.proc is None:
            return
        try:
            if self.alive() and qmp_socket is not None:
                mon = self.qmp(qmp_socket, timeout=2.0)
                if powerdown:
                    mon.cmd("system_powerdown")
                    if self._wait(timeout):
                        return
                mon.cmd("quit")
        except Exception:  # noqa: BLE001 - any QMP trouble ends in SIGKILL below
            pass
        finally:
            if not self._wait(timeout):
                self.kill()
            self._close_qmp()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _wait(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _close_qmp(self) -> None:
        if self._qmp is not None:
            with contextlib.suppress(Exception):  # QEMU already gone
                self._qmp.close()
            self._qmp = None
