"""Attaching the user's terminal to a guest's serial console (`amilab boot --console`).

QEMU serves the console on a Unix socket (and logs it to the console log); this relays the
terminal in raw mode so that Ctrl-C, arrows and the like reach the guest, and Ctrl-] (as
telnet and `virsh console`) detaches.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Callable
from pathlib import Path

from builder.sockets import unix_path

ESCAPE = b"\x1d"  # Ctrl-]


def connect(path: Path, alive: Callable[[], bool], timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(unix_path(path))
            return sock
        except OSError:
            sock.close()
            if not alive() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def relay(sock: socket.socket, alive: Callable[[], bool]) -> str:
    """Relay until Ctrl-], end of input or QEMU's exit; returns which one it was."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    if saved is not None:
        tty.setraw(stdin)
    try:
        while True:
            if not alive():
                return "guest stopped"
            ready, _, _ = select.select([sock, stdin], [], [], 0.5)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return "guest stopped"
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data:
                    return "end of input"
                if ESCAPE in data:
                    sock.sendall(data.split(ESCAPE, 1)[0])
                    return "detached"
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
