"""Reaching the guest over SSH (paramiko) while watching its console.

Slirp accepts the host side of a forwarded port at once, whatever the guest is doing, so
"connection refused" never comes: an early connection is either reset (the guest's network
is up, sshd is not) or left silent (the guest's network is not up yet, or sshd is starting).
So the harness first waits for the server's first bytes without consuming them (MSG_PEEK,
see `_banner_ready`) and only then lets paramiko talk SSH on that socket. Authentication is
retried too: the image's agent may not have installed the instance's key yet.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko

from builder.errors import AmilabError

BANNER_SLICE = 0.25  # how often pending connections and the console are checked
BANNER_WAIT = 20.0  # how long one round of probes lasts before check-and-retry
PROBE_INTERVAL = 1.0  # a new connection this often while none has answered
MAX_PROBES = 8  # pending at once; the oldest gives way to a new one
# ... and this often while the console is expected to say when sshd starts, and once it
# has: every probe made before the guest's network is up stays in slirp, its SYN
# retransmitted, and reaches sshd once it listens, closed or not by then; every probe made
# after sshd listens is a fork and exec of sshd. On a slow guest (arm64 under TCG, a loaded
# host) a probe a second outran sshd: an arm64 guest's journal showed 14 connections in the
# 20 s after sshd started, "beginning MaxStartups throttling" three times, and a login
# phase of 36-124 s against under a second for one login on the settled guest.
REPORTED_PROBE_INTERVAL = 5.0
POLL = 0.2


class SshTimeout(AmilabError):
    """No login before the deadline, and the console named no reason (exit code 1)."""


class BootFailed(AmilabError):
    """The guest will not come up; `reason` says why, `tail` is the console's end."""

    def __init__(self, reason: str, tail: str = "") -> None:
        super().__init__(reason + (f"\nconsole tail:\n{tail}" if tail else ""))
        self.reason = reason
        self.tail = tail


@dataclass
class SshLogin:
    client: paramiko.SSHClient
    banner_at: float  # monotonic time the first SSH banner was seen
    attempts: int
    host_key: str | None


@dataclass
class SshResult:
    status: int
    output: str


class _AnyHostKey(paramiko.MissingHostKeyPolicy):
    """Every instance is new: its host key cannot be known in advance. Record it."""

    def __init__(self) -> None:
        self.seen: str | None = None

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self.seen = f"{key.get_name()} {key.fingerprint}"


def _banner_ready(
    port: int,
    check: Callable[[], None] = lambda: None,
    wait: float | None = None,
    host: str = "127.0.0.1",
    ready: Callable[[], bool] = lambda: False,
    reported: Callable[[], bool] = lambda: False,
) -> socket.socket | None:
    """A connected socket whose peer has started talking (the SSH banner, peeked, not read),
    or None when nothing answered within `wait` (default BANNER_WAIT).

    A connection is opened every PROBE_INTERVAL and kept open, because each can be slow for
    a different reason: one that sshd has accepted only needs sshd to fork and start, and
    closing it would cost the guest that fork again (logged as kex_exchange_identification
    errors), while one made before the guest's network was up waits for slirp to retransmit
    its SYN. Slirp's first retransmission comes 6 s after the SYN and the next 12 s later
    (its initial RTO, doubled), so a full set of old probes would leave a guest that came up
    just after their first retransmissions waiting for the second: under load that was
    ~19 s to SSH against ~13 s, the guest idle in between. So probing never stops: at
    MAX_PROBES the oldest (the one whose SYN is the furthest backed off) is closed for a
    fresh one. Resets (nothing listens yet) are dropped at once. `check()` runs every
    BANNER_SLICE so console failures end the wait at once. When `ready()` first says sshd
    has started (the console's word), a fresh probe goes out at once instead of at the
    next tick: half a PROBE_INTERVAL saved on average. While `reported()` says the console
    will give that word, and after it has, probes go out only every REPORTED_PROBE_INTERVAL
    (see there), but every PROBE_INTERVAL again after a reset, which costs the guest
    nothing. A connection whose first bytes are not "SSH-" is dropped as a reset is."""
    deadline = time.monotonic() + (BANNER_WAIT if wait is None else wait)
    pending: list[socket.socket] = []
    next_probe = 0.0
    hinted = False
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if not hinted and ready():
                hinted, next_probe = True, now
            if now >= next_probe:
                if len(pending) >= MAX_PROBES:
                    pending.pop(0).close()
                sock = socket.create_connection((host, port), timeout=BANNER_SLICE)
                sock.setblocking(False)
                pending.append(sock)
                sparse = hinted or reported()
                next_probe = now + (REPORTED_PROBE_INTERVAL if sparse else PROBE_INTERVAL)
            readable, _, _ = select.select(pending, [], [], BANNER_SLICE)
            for sock in readable:
                try:
                    data = sock.recv(4, socket.MSG_PEEK)
                except OSError:
                    data = b""
                if data and b"SSH-".startswith(data):
                    pending.remove(sock)
                    sock.setblocking(True)
                    return sock
                # reset (nothing listens yet), or not a banner: sshd's "Exceeded
                # MaxStartups" before it closes, which paramiko would take for one
                pending.remove(sock)
                sock.close()
                # a reset costs the guest no fork (its network is up, sshd not listening
                # yet): the next probe goes out at the usual tick, however sparse
                next_probe = min(next_probe, time.monotonic() + PROBE_INTERVAL)
            check()
        return None
    finally:
        for sock in pending:
            sock.close()


def ssh_answers(port: int, host: str = "127.0.0.1", wait: float = 5.0) -> bool:
    """Whether an SSH server's first bytes reach `host:port` within `wait` seconds (the
    probe of `_banner_ready`; nothing is sent to it)."""
    sock = _banner_ready(port, wait=wait, host=host)
    if sock is None:
        return False
    sock.close()
    return True


def wait_for_ssh(
    port: int,
    pkey: paramiko.PKey,
    timeout: float,
    check: Callable[[], None],
    user: str = "root",
    host: str = "127.0.0.1",
    ready: Callable[[], bool] = lambda: False,
    reported: Callable[[], bool] = lambda: False,
) -> SshLogin:
    """Connect and authenticate; `check()` runs between attempts and raises to give up early
    (console failure, QEMU gone)."""
    deadline = time.monotonic() + timeout
    last = "no SSH banner yet"
    banner_at: float | None = None
    attempts = 0
    while True:
        check()
        if time.monotonic() > deadline:
            raise SshTimeout(f"no SSH login within {timeout:.0f} s (last: {last})")
        attempts += 1
        try:
            sock = _banner_ready(port, check, host=host, ready=ready, reported=reported)
        except OSError as e:
            sock, last = None, f"connect: {e}"
        if sock is None:
            time.sleep(POLL)
            continue
        if banner_at is None:
            banner_at = time.monotonic()
        client = paramiko.SSHClient()
        policy = _AnyHostKey()
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(
                host, port=port, username=user, pkey=pkey, sock=sock,
                look_for_keys=False, allow_agent=False, timeout=30,
                banner_timeout=30, auth_timeout=30,
            )  # fmt: skip
            return SshLogin(client, banner_at, attempts, policy.seen)
        except paramiko.AuthenticationException as e:
            last = f"authentication failed ({e}); the image's agent may not have the key yet"
        except (paramiko.SSHException, EOFError, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        client.close()
        sock.close()
        time.sleep(POLL)


def run(client: paramiko.SSHClient, command: str, timeout: float = 60.0) -> SshResult:
    """Run a command; stdout and stderr together, as a person at the console would see them."""
    chan = client.get_transport().open_session(timeout=timeout)  # type: ignore[union-attr]
    chan.settimeout(timeout)
    chan.set_combine_stderr(True)
    chan.exec_command(command)
    chan.shutdown_write()
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            chan.close()
            raise TimeoutError(f"command did not finish within {timeout:.0f} s: {command}")
        data = chan.recv(65536)
        if not data:
            break
        chunks.append(data)
    status = chan.recv_exit_status()
    chan.close()
    return SshResult(status, b"".join(chunks).decode("utf-8", errors="replace"))
