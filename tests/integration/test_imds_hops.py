"""The IMDSv2 PUT response hop limit, enforced by real routing: `amilab imds serve` in one
network namespace, a router namespace forwarding between two veth links, a client in a
third. One hop too many and the token never arrives (the router drops it, TTL exceeded),
while plain GETs still do, as on EC2 for a container behind a bridge."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AMILAB, ROOT

pytestmark = pytest.mark.integration

SERVER_IP = "10.231.1.1"
PORT = 8080


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def routed() -> Iterator[tuple[str, str]]:
    """(server namespace, client namespace), one router between them."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root: run the suite as scripts/test.sh does (sudo)")
    tag = uuid.uuid4().hex[:6]
    srv, rtr, cli = f"amis-{tag}", f"amir-{tag}", f"amic-{tag}"
    try:
        for ns in (srv, rtr, cli):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"s{tag}", "netns", srv, "type", "veth", "peer", f"r{tag}", "netns", rtr)
        _ip("link", "add", f"c{tag}", "netns", cli, "type", "veth", "peer", f"q{tag}", "netns", rtr)
        for ns, dev, addr in (
            (srv, f"s{tag}", f"{SERVER_IP}/24"),
            (rtr, f"r{tag}", "10.231.1.254/24"),
            (rtr, f"q{tag}", "10.231.2.254/24"),
            (cli, f"c{tag}", "10.231.2.1/24"),
        ):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", srv, "route", "add", "default", "via", "10.231.1.254")
        _ip("-n", cli, "route", "add", "default", "via", "10.231.2.254")
        subprocess.run(
            ["ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
        )
        yield srv, cli
    finally:
        for ns in (srv, rtr, cli):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# Run in the client namespace: a token request, then a GET without one. Prints what came back.
CLIENT = """
import socket, sys
def ask(req):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.sendall(req)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except socket.timeout:
        return "timeout"
    return data.split(b"\\r\\n", 1)[0].decode()
TTL = b"X-aws-ec2-metadata-token-ttl-seconds: 60"
print(ask(b"PUT /latest/api/token HTTP/1.1\\r\\n" + TTL + b"\\r\\n\\r\\n"))
print(ask(b"GET /latest/meta-data/instance-id HTTP/1.1\\r\\n\\r\\n"))
"""


def _client_sees(routed: tuple[str, str], hops: int, tmp_path: Path) -> list[str]:
    srv, cli = routed
    config = tmp_path / f"hops{hops}.yaml"
    config.write_text(f"http_put_response_hop_limit: {hops}\n")
    server = subprocess.Popen(
        ["ip", "netns", "exec", srv, *AMILAB, "imds", "serve", "--bind", SERVER_IP,
         "--port", str(PORT), "--config", str(config)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:  # listening once a connection from its own namespace succeeds
            probe = subprocess.run(
                ["ip", "netns", "exec", srv, sys.executable, "-c",
                 f"import socket; socket.create_connection(('{SERVER_IP}', {PORT}), 1)"],
                capture_output=True,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "imds serve did not listen"
            time.sleep(0.2)
        out = subprocess.run(
            ["ip", "netns", "exec", cli, sys.executable, "-c", CLIENT, SERVER_IP, str(PORT)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout.splitlines()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_token_does_not_cross_more_hops_than_the_limit(
    routed: tuple[str, str], tmp_path: Path
) -> None:
    # two hops away (server → router → client): limit 1 loses the token, GETs still work
    assert _client_sees(routed, 1, tmp_path) == ["timeout", "HTTP/1.1 200 OK"]
    assert _client_sees(routed, 2, tmp_path) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]
