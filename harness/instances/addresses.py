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


def _free(address: str) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, 22))
        except OSError:
            return False
    return True


def allocate(taken_extra: set[str] | None = None) -> str:
    """Call with `store.locked("addresses")` held, and record the address before releasing."""
    taken = set(taken_extra or ())
    for rec in store.instances().list():
        if rec["State"]["Name"] != "terminated" and rec.get("PublicIpAddress"):
            taken.add(rec["PublicIpAddress"])
    for host in NETWORK.hosts():
        address = str(host)
        if address.endswith(".0") or address in taken:
            continue
        if _free(address):
            return address
    raise EnvironmentProblem(f"no free loopback address left in {NETWORK}")


def dns_name(address: str) -> str:
    """EC2-Classic's public DNS name form, for describe-instances."""
    return "ec2-" + address.replace(".", "-") + ".compute-1.amazonaws.com"
