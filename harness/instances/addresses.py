"""Each instance's own loopback address (127.0.0.0/8) as its public and private IP.

Linux answers on every address of 127.0.0.0/8, so a forward bound to one of them gives the
instance port 22 of an address of its own: `ssh -i key.pem root@ADDRESS` and tools that
assume port 22 work unchanged. Addresses are handed out from 127.100.0.0/16 (away from
127.0.0.1 and Debian's 127.0.1.1), the lowest one no live instance holds and nothing on the
host listens on.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from builder.errors import EnvironmentProblem
from harness.instances import store

NETWORK = ipaddress.ip_network("127.100.0.0/16")
# How long an address handed out stays reserved host-wide: from allocation until QEMU has
# bound its forward (seconds after, even on a loaded host), after which the bind itself
# keeps other homes off it.
LEASE_S = 300.0


def _free(address: str, port: int = 22) -> int | None:
    """The port if it can be bound on `address` (0: any free one), else None."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def bindable(address: str, port: int) -> bool:
    return _free(address, port) is not None


def port_22_held_everywhere() -> bool:
    """Whether a socket listens on port 22 of every address (0.0.0.0 or ::), as a host's
    own sshd does: then no loopback address can have port 22 for an instance."""
    tables = (("/proc/net/tcp", "00000000:0016"), ("/proc/net/tcp6", "0" * 32 + ":0016"))
    for table, wildcard in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1] == wildcard and fields[3] == "0A":  # LISTEN
                return True
    return False


def allocate(taken_extra: set[str] | None = None) -> tuple[str, int]:
    """An address and its SSH port: 22, unless something on the host listens on port 22 of
    every address (an sshd bound to 0.0.0.0 holds 22 on all of 127.0.0.0/8 too); then a
    free port of that address, kept in the instance's record. An address whose port 22 is
    bound already (another AMILAB_HOME's instance) is skipped.
    Call with `store.locked("addresses")` held, and record it before releasing."""
    taken = set(taken_extra or ())
    for rec in store.instances().list():
        if rec["State"]["Name"] != "terminated" and rec.get("PublicIpAddress"):
            taken.add(rec["PublicIpAddress"])
    everywhere = port_22_held_everywhere()
    with _host_leases() as leases:
        taken |= set(leases)
        for host in NETWORK.hosts():
            address = str(host)
            if address.endswith(".0") or address in taken:
                continue
            port = _free(address, 0 if everywhere else 22)
            if port is not None:
                leases[address] = time.time() + LEASE_S
                return address, port
    raise EnvironmentProblem(f"no free loopback address left in {NETWORK}")


class _host_leases:
    """Addresses handed out lately by any AMILAB_HOME on this host, under a host-wide lock.
    The per-home lock cannot see another home's instance between its allocation and its
    QEMU's bind, and two homes launching at once (parallel test workers, two users) would
    otherwise both find the same address free."""

    def __init__(self) -> None:
        base = Path(tempfile.gettempdir()) / f"amilab-addresses-{os.getuid()}"
        self.lock, self.path = base.with_suffix(".lock"), base.with_suffix(".json")
        self.leases: dict[str, float] = {}

    def __enter__(self) -> dict[str, float]:
        self.fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        now = time.time()
        if isinstance(data, dict):
            self.leases = {
                a: float(t) for a, t in data.items() if isinstance(t, int | float) and t > now
            }
        return self.leases

    def __exit__(self, *exc: object) -> None:
        try:
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.leases))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a lease not written only narrows the race back to what it was
        finally:
            os.close(self.fd)


def dns_name(address: str) -> str:
    """EC2-Classic's public DNS name form, for describe-instances."""
    return "ec2-" + address.replace(".", "-") + ".compute-1.amazonaws.com"
