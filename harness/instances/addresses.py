"""Each instance's own loopback address (127.0.0.0/8) as its public and private IP.

Linux answers on every address of 127.0.0.0/8, so a forward bound to one of them gives the
instance port 22 of an address of its own: `ssh -i key.pem root@ADDRESS` and tools that
assume port 22 work unchanged. Addresses are handed out from 127.100.0.0/16 (away from
127.0.0.1 and Debian's 127.0.1.1), the lowest one no live instance holds and nothing on the
host listens on.
"""

from __future__ import annotations

import ipaddress
import socket

from builder.errors import EnvironmentProblem
from harness.instances import store

NETWORK = ipaddress.ip_network("127.100.0.0/16")


def _free(address: str, port: int = 22) -> int | None:
    """The port if it can be bound on `address` (0: any free one), else None."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def allocate(taken_extra: set[str] | None = None) -> tuple[str, int]:
    """An address and its SSH port: 22, unless something on the host listens on port 22 of
    every address (an sshd bound to 0.0.0.0 holds 22 on all of 127.0.0.0/8 too); then a
    free port of that address, which describe-instances' callers read from the record.
    Call with `store.locked("addresses")` held, and record it before releasing."""
    taken = set(taken_extra or ())
    for rec in store.instances().list():
        if rec["State"]["Name"] != "terminated" and rec.get("PublicIpAddress"):
            taken.add(rec["PublicIpAddress"])
    for host in NETWORK.hosts():
        address = str(host)
        if address.endswith(".0") or address in taken:
            continue
        if _free(address) is not None:
            return address, 22
        if (port := _free(address, 0)) is not None:  # port 22 is held for every address
            return address, port
    raise EnvironmentProblem(f"no free loopback address left in {NETWORK}")


def dns_name(address: str) -> str:
    """EC2-Classic's public DNS name form, for describe-instances."""
    return "ec2-" + address.replace(".", "-") + ".compute-1.amazonaws.com"
