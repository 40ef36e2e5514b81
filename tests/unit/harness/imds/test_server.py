"""`amilab imds serve`'s event loop: slow, silent and malformed clients (issue 5)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harness.imds.document import InstanceMetadata, document
from harness.imds.server import MetadataServer


@pytest.fixture
def server() -> Iterator[MetadataServer]:
    md = InstanceMetadata(ami_id="ami-0123456789abcdef0", instance_id="i-0123456789abcdef0")
    srv = MetadataServer.tcp(document(md), "127.0.0.1", 0, timeout=1.0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.stopping = True
    t.join(timeout=5)


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(data)
        out = b""
        while chunk := c.recv(4096):
            out += chunk
    return out


def test_a_silent_client_does_not_hold_up_others(server: MetadataServer) -> None:
    port = server.address[1]
    with socket.create_connection(("127.0.0.1", port)) as silent:
        silent.sendall(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n")  # never finishes
        t = time.monotonic()
        out = _exchange(port, b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n")
        assert out.endswith(b"ami-0123456789abcdef0") and time.monotonic() - t < 0.5
        silent.settimeout(5)
        assert silent.recv(4096) == b""  # dropped after the timeout


def test_split_and_malformed_requests(server: MetadataServer) -> None:
    port = server.address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        for piece in (b"GET /latest/meta-", b"data/instance-id HTTP/1.1\r\n", b"\r\n"):
            c.sendall(piece)
            time.sleep(0.02)
        assert c.recv(4096).endswith(b"i-0123456789abcdef0")
    assert _exchange(port, b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _exchange(port, b"BREW /latest/ HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert _exchange(port, b"A" * 20000).startswith(b"HTTP/1.1 400")
    assert server.answered == 4  # what an instance's supervisor counts as the guest answering
