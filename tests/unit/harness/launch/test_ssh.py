"""SSH readiness against slirp's behaviours: reset, silent, banner; early failure."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from harness.launch import ssh
from harness.launch.ssh import BootFailed, SshTimeout, _banner_ready, wait_for_ssh
from tests.unit.harness.launch.fake_sshd import listener, serve, sshd_answering


@pytest.mark.parametrize("behaviour,ready", [("reset", False), ("silent", False), ("banner", True)])
def test_banner_probe(behaviour: str, ready: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh, "BANNER_WAIT", 0.3)
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    port, stop = serve(behaviour)
    try:
        sock = _banner_ready(port)
        assert (sock is not None) == ready
        if sock:
            assert sock.recv(4) == b"SSH-"  # peeked, not consumed
            sock.close()
    finally:
        stop.set()


def test_console_failure_ends_the_wait_at_once() -> None:
    port, stop = serve("reset")
    t0 = time.monotonic()

    def check() -> None:
        if time.monotonic() - t0 > 0.5:
            raise BootFailed("kernel panic: Fatal exception", "tail")

    try:
        with pytest.raises(BootFailed, match="kernel panic"):
            wait_for_ssh(port, None, 60, check)  # type: ignore[arg-type]
    finally:
        stop.set()
    assert time.monotonic() - t0 < 5


def test_timeout_names_the_last_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh, "BANNER_WAIT", 0.2)
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.1)
    port, stop = serve("silent")
    try:
        with pytest.raises(SshTimeout, match="no SSH banner yet"):
            wait_for_ssh(port, None, 1.0, lambda: None)  # type: ignore[arg-type]
    finally:
        stop.set()


def test_a_silent_connection_is_kept_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silent connections stay open (no new sshd per probe), new ones are added while
    nothing answers, and the console check still runs often."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    port, stop = serve("silent")
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 10:
            raise BootFailed("kernel panic", "")

    t0 = time.monotonic()
    try:
        with pytest.raises(BootFailed):
            _banner_ready(port, check)
    finally:
        stop.set()
    assert time.monotonic() - t0 < 3


def test_a_late_answer_on_an_early_connection_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first connection answers only after a while (as when slirp retransmits a SYN):
    it is still taken, and the later probes are closed."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    srv, port = listener()
    conns: list[socket.socket] = []

    def late() -> None:
        first, _ = srv.accept()
        time.sleep(0.5)
        first.sendall(b"SSH-2.0-late\r\n")
        conns.append(first)
        srv.settimeout(1)
        try:
            while True:
                conns.append(srv.accept()[0])
        except OSError:
            pass

    threading.Thread(target=late, daemon=True).start()
    sock = _banner_ready(port, wait=5)
    assert sock is not None and sock.recv(64).startswith(b"SSH-2.0-late")
    sock.close()
    srv.close()


def test_probing_goes_on_past_the_cap_with_fresh_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections made before sshd listened stay silent (slirp's SYN backed off): at
    MAX_PROBES the oldest gives way, so a connection made once sshd is up is answered at
    once instead of the wait ending with nothing."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    monkeypatch.setattr(ssh, "MAX_PROBES", 3)
    srv, port = listener()
    held: list[socket.socket] = []
    up = time.monotonic() + 0.6  # "sshd" answers connections accepted after this

    sshd_answering(srv, held, lambda: time.monotonic() >= up)
    t0 = time.monotonic()
    sock = _banner_ready(port, wait=3)
    took = time.monotonic() - t0
    srv.close()
    assert sock is not None and sock.recv(4) == b"SSH-", "no fresh probe after the cap"
    sock.close()
    assert took < 1.5
    assert len(held) > 3  # more connections than the cap were made


def test_the_consoles_word_sends_a_fresh_probe_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first connection stays silent (made before sshd listened, its SYN backed off);
    when the console says sshd started, a fresh probe goes out at once, long before the
    next PROBE_INTERVAL, and is answered."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 30.0)
    srv, port = listener()
    held: list[socket.socket] = []

    # every connection but the first is answered
    sshd_answering(srv, held, lambda: bool(held))
    up = time.monotonic() + 0.5
    t0 = time.monotonic()
    sock = _banner_ready(port, wait=5, ready=lambda: time.monotonic() >= up)
    took = time.monotonic() - t0
    srv.close()
    assert sock is not None, "no fresh probe when the console said sshd started"
    assert sock.recv(4) == b"SSH-"
    sock.close()
    assert took < 2.0
    assert len(held) == 2


def test_probes_are_sparse_while_the_console_will_announce_sshd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the console is expected to say when sshd starts, probes go out only every
    REPORTED_PROBE_INTERVAL (each made before the guest's network is up would reach sshd
    later as a connection it forks for); the word still sends one at once, and no more go
    out while that one waits for its banner (a slow guest's sshd is still starting it)."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    monkeypatch.setattr(ssh, "REPORTED_PROBE_INTERVAL", 30.0)
    srv, port = listener()
    held: list[socket.socket] = []
    up = time.monotonic() + 1.0  # the console's word, after ten PROBE_INTERVALs
    sshd_answering(srv, held, lambda: time.monotonic() >= up)
    sock = _banner_ready(port, wait=5, ready=lambda: time.monotonic() >= up, reported=lambda: True)
    srv.close()
    assert sock is not None and sock.recv(4) == b"SSH-"
    sock.close()
    assert len(held) == 2  # the first probe, then the one the word sent
    for conn in held:
        conn.close()


def test_no_probe_a_tick_while_a_slow_sshd_starts_the_one_the_word_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the console's word, a slow guest's sshd takes a while to send its banner (a
    fork and exec under emulation): more probes meanwhile would each cost it one more."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    monkeypatch.setattr(ssh, "REPORTED_PROBE_INTERVAL", 30.0)
    srv, port = listener()
    held: list[socket.socket] = []
    sshd_answering(srv, held, lambda: True, delay=0.8)
    sock = _banner_ready(port, wait=5, ready=lambda: True, reported=lambda: True)
    srv.close()
    assert sock is not None and sock.recv(4) == b"SSH-"
    sock.close()
    assert len(held) == 1
    for conn in held:
        conn.close()


def test_after_a_reset_probes_go_out_at_the_usual_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reset means the guest's network is up and sshd not listening yet: probing on at
    PROBE_INTERVAL costs the guest no fork, and finds sshd as soon as it listens, however
    late the console's word."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    monkeypatch.setattr(ssh, "REPORTED_PROBE_INTERVAL", 30.0)
    accepted: list[float] = []
    port, stop = serve("reset", accepted)
    try:
        assert _banner_ready(port, wait=1.0, reported=lambda: True) is None
    finally:
        stop.set()
    assert len(accepted) > 3


def test_sshds_maxstartups_refusal_is_not_taken_for_a_banner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sshd past MaxStartups writes "Exceeded MaxStartups" and closes: that connection is
    dropped like a reset, and the next one, which gets a banner, is taken."""
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    srv, port = listener()
    held: list[socket.socket] = []
    sshd_answering(srv, held, lambda: True, refuse=1)
    sock = _banner_ready(port, wait=5)
    srv.close()
    assert sock is not None and sock.recv(64).startswith(b"SSH-2.0-OpenSSH")
    sock.close()
    for conn in held:
        conn.close()


def test_probing_stays_frequent_when_the_console_will_not_announce_sshd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ssh, "BANNER_SLICE", 0.05)
    monkeypatch.setattr(ssh, "PROBE_INTERVAL", 0.1)
    monkeypatch.setattr(ssh, "REPORTED_PROBE_INTERVAL", 30.0)
    srv, port = listener()
    held: list[socket.socket] = []
    up = time.monotonic() + 1.0
    sshd_answering(srv, held, lambda: time.monotonic() >= up)
    sock = _banner_ready(port, wait=5, reported=lambda: False)
    srv.close()
    assert sock is not None and sock.recv(4) == b"SSH-"
    sock.close()
    assert len(held) > 3
