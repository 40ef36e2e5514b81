"""Listeners that stand for a guest's SSH port behind slirp (no tests here): one that resets
each connection, one that accepts and stays silent (slirp accepts before the guest's sshd is
up), and one that sends an SSH banner."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


def listener() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    return srv, srv.getsockname()[1]


def serve(behaviour: str, accepted: list[float] | None = None) -> tuple[int, threading.Event]:
    """A listener that resets ("reset"), stays silent ("silent"), or sends an SSH banner
    (anything else) on each connection: its port, and the event that ends it. The time of
    each connection is added to `accepted`."""
    srv, port = listener()
    stop = threading.Event()

    def loop() -> None:
        srv.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            if accepted is not None:
                accepted.append(time.monotonic())
            if behaviour == "reset":
                conn.close()
                continue
            if behaviour != "silent":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            held.append(conn)
        for c in held:
            c.close()
        srv.close()

    threading.Thread(target=loop, daemon=True).start()
    return port, stop


def sshd_answering(
    srv: socket.socket,
    held: list[socket.socket],
    answers: Callable[[], bool],
    delay: float = 0.0,
    refuse: int = 0,
) -> None:
    """Accept on `srv` (in a thread) until it is closed, keeping every connection in `held`:
    one accepted while `answers()` is false stays silent (made before sshd listened), one
    accepted when it is true gets an SSH banner, `delay` seconds later (a slow guest's sshd
    starting its child). The first `refuse` answered get sshd's MaxStartups refusal instead
    and are closed."""

    def loop() -> None:
        srv.settimeout(0.1)
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            answer = answers()
            held.append(conn)  # before the banner: a client that has it may count at once
            if answer and len(held) <= refuse:
                conn.sendall(b"Exceeded MaxStartups\r\n")
                conn.close()
            elif answer:
                threading.Timer(delay, conn.sendall, (b"SSH-2.0-OpenSSH_9.2\r\n",)).start()

    threading.Thread(target=loop, daemon=True).start()
