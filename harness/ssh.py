"""Reaching the guest over SSH (paramiko) while watching its console.

Slirp accepts the host side of a forwarded port at once, whatever the guest is doing, so
"connection refused" never comes: an early connection is either reset (the guest's network
is up, sshd is not) or left silent (the guest's network is not up yet). So each attempt first
waits briefly for the server's first bytes without consuming them (MSG_PEEK), reconnecting
when they do not come, and only then lets paramiko talk SSH on that socket. Authentication
is retried too: the image's agent may not have installed the instance's key yet.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko

from builder.errors import AmilabError

BANNER_SLICE = 0.5  # how often a silent connection is checked on
BANNER_WAIT = 20.0  # silence after which a connection is replaced
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


def _banner_ready(port: int, check: Callable[[], None] = lambda: None) -> socket.socket | None:
    """A connected socket whose peer has started talking, or None when the guest reset it.

    A silent connection is kept, not retried: slirp holds its SYN until the guest's network
    answers, and once sshd has accepted, closing early would only make the guest fork
    another sshd (costly under TCG, and logged as kex_exchange_identification errors).
    `check()` runs every BANNER_SLICE so console failures still end the wait at once; after
    BANNER_WAIT of silence the connection is replaced, in case slirp gave up on it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=BANNER_SLICE)
    sock.settimeout(BANNER_SLICE)
    waited = 0.0
    try:
        while waited < BANNER_WAIT:
            try:
                if sock.recv(4, socket.MSG_PEEK):
                    sock.settimeout(None)
                    return sock
                break  # EOF: the guest reset the connection (nothing listens yet)
            except TimeoutError:
                waited += BANNER_SLICE
                check()
    except BaseException:
        sock.close()
        raise
    sock.close()
    return None


def wait_for_ssh(
    port: int,
    pkey: paramiko.PKey,
    timeout: float,
    check: Callable[[], None],
    user: str = "root",
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
            sock = _banner_ready(port, check)
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
                "127.0.0.1", port=port, username=user, pkey=pkey, sock=sock,
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
