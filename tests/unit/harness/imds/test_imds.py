"""The metadata service's tree, HTTP answers, per-connection process and host server."""

from __future__ import annotations

import json
import marshal
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.imds import protocol as imds_cgi
from harness.imds.document import VERSIONS, InstanceMetadata, document, write_document
from harness.imds.protocol import answer, lookup

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample amilab-i-0123456789abcdef0"


def _md(**kw: object) -> InstanceMetadata:
    base = dict(
        ami_id="ami-0123456789abcdef0",
        instance_id="i-0123456789abcdef0",
        public_key=KEY,
        key_name="amilab-key",
        kernel_id="aki-0123456789abcdef0",
        ramdisk_id=None,
    )
    base.update(kw)
    return InstanceMetadata(**base)  # type: ignore[arg-type]


@pytest.fixture
def tree() -> dict:
    return document(_md())


def test_leaves_and_prefixes(tree: dict) -> None:
    for prefix in ("/latest", "/2008-02-01", "/2021-03-23"):
        assert lookup(tree, f"{prefix}/meta-data/kernel-id") == (200, "aki-0123456789abcdef0")
        assert lookup(tree, f"{prefix}/meta-data/ami-id") == (200, "ami-0123456789abcdef0")
    # kernel-id arrived with 2008-02-01; older versions never had it
    assert lookup(tree, "/1.0/meta-data/kernel-id")[0] == 404
    assert lookup(tree, "/1.0/meta-data/ami-id") == (200, "ami-0123456789abcdef0")
    assert lookup(tree, "/latest/meta-data/placement/availability-zone") == (200, "us-east-1a")


def test_absent_ramdisk_is_404_and_not_listed(tree: dict) -> None:
    status, _ = lookup(tree, "/latest/meta-data/ramdisk-id")
    assert status == 404
    listing = lookup(tree, "/latest/meta-data/")[1].split("\n")
    assert "ramdisk-id" not in listing
    assert "kernel-id" in listing


def test_listings_as_ec2_formats_them(tree: dict) -> None:
    status, body = lookup(tree, "/latest/meta-data/")
    assert status == 200
    lines = body.split("\n")
    assert lines == sorted(lines)
    assert "placement/" in lines and "public-keys/" in lines and "instance-id" in lines
    assert not body.endswith("\n")
    assert lookup(tree, "/latest/meta-data/public-keys/") == (200, "0=amilab-key")
    assert lookup(tree, "/latest/meta-data/public-keys/0/") == (200, "openssh-key")
    assert lookup(tree, "/latest/meta-data/public-keys/0/openssh-key") == (200, KEY + "\n")
    assert lookup(tree, "/latest/") == (200, "dynamic\nmeta-data")
    root = lookup(tree, "/")[1].split("\n")
    assert root == list(VERSIONS) and root[-1] == "latest" and "2008-02-01" in root


def test_slashes_and_query_as_clients_send_them(tree: dict) -> None:
    assert lookup(tree, "//latest//meta-data/instance-id/") == (200, "i-0123456789abcdef0")
    assert lookup(tree, "/latest/meta-data/public-keys")[1] == "0=amilab-key"
    assert lookup(tree, "/latest/meta-data/ami-id?x=1") == (200, "ami-0123456789abcdef0")
    assert lookup(tree, "/latest/meta-data/ami-id/extra")[0] == 404
    assert lookup(tree, "/nope/meta-data/ami-id")[0] == 404


def test_hvm_has_neither_kernel_nor_ramdisk() -> None:
    tree = document(_md(kernel_id=None))
    assert lookup(tree, "/latest/meta-data/kernel-id")[0] == 404
    assert lookup(tree, "/2008-02-01/meta-data/ramdisk-id")[0] == 404


def test_http_answers(tree: dict) -> None:
    ok = answer(b"GET /latest/meta-data/kernel-id HTTP/1.1\r\nHost: x\r\n\r\n", tree)
    head, body = ok.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Server: EC2ws" in head and b"Content-Type: text/plain" in head
    assert b"Content-Length: 21" in head and b"Connection: close" in head
    assert body == b"aki-0123456789abcdef0"
    missing = answer(b"GET /latest/meta-data/ramdisk-id HTTP/1.1\r\n\r\n", tree)
    assert missing.startswith(b"HTTP/1.1 404 Not Found") and b"text/html" in missing
    head_only = answer(b"HEAD /latest/meta-data/ami-id HTTP/1.1\r\n\r\n", tree)
    assert head_only.endswith(b"\r\n\r\n") and b"Content-Length: 21" in head_only
    # PUT without a TTL header (IMDSv2 in detail: test_imds_v2.py)
    assert answer(b"PUT /latest/api/token HTTP/1.1\r\n\r\n", tree).startswith(b"HTTP/1.1 400")
    assert answer(b"DELETE /latest/ HTTP/1.1\r\n\r\n", tree).startswith(b"HTTP/1.1 405")
    assert answer(b"garbage\r\n\r\n", tree).startswith(b"HTTP/1.1 400")
    absolute = answer(b"GET http://169.254.169.254/latest/meta-data/ami-id HTTP/1.1\r\n\r\n", tree)
    assert absolute.endswith(b"ami-0123456789abcdef0")


def _cgi(doc: Path, request: bytes) -> tuple[bytes, float]:
    """Run the service once; its output and the CPU time it used (user + system: unlike wall
    time, hardly affected by whatever else the machine is running)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, "-I", "-S", imds_cgi.__file__, str(doc)],
        input=request,
        capture_output=True,
        timeout=30,
    )
    return out.stdout + out.stderr, _cpu_since(before)


def _cpu_since(before: resource.struct_rusage) -> float:
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def test_per_connection_process(tmp_path: Path) -> None:
    doc = write_document(_md(), tmp_path / "metadata.marshal")
    out, _ = _cgi(doc, b"GET /2008-02-01/meta-data/kernel-id HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"aki-0123456789abcdef0")
    # a broken document must not put a traceback on the guest's socket
    (tmp_path / "bad.marshal").write_bytes(b"\x00garbage")
    out, _ = _cgi(tmp_path / "bad.marshal", b"GET / HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500") and b"Traceback" not in out


def test_per_connection_process_is_cheap(tmp_path: Path) -> None:
    """Every guest request pays this start-up: it must cost little more than the bare
    interpreter's (measured ~3 ms of CPU more; json instead of marshal added ~5 ms)."""
    doc = write_document(_md(), tmp_path / "metadata.marshal")
    service, bare = [], []
    for _ in range(15):
        service.append(_cgi(doc, b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n")[1])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], input=b"", capture_output=True)
        bare.append(_cpu_since(before))
    extra = statistics.median(service) - statistics.median(bare)
    assert extra < 0.010, f"the service costs {extra * 1000:.1f} ms of CPU more than python"


def test_cgi_imports_nothing_heavy() -> None:
    """Only modules compiled or frozen into the interpreter or loaded at its start (no file to find
    and load per request);
    _sha2 is 3.12's name for 3.11's built-in _sha256."""
    import ast

    tree = ast.parse(Path(imds_cgi.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    preloaded = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    import _imp

    allowed = set(sys.builtin_module_names) | set(preloaded) | {"_sha2"}
    # frozen modules (os since 3.11) come out of the executable, not the disk
    assert {n for n in names if not _imp.is_frozen(n)} <= allowed, names - allowed
    assert "marshal" in names


def test_host_server(tmp_path: Path) -> None:
    from harness.imds import server as imds_serve

    config = tmp_path / "instance.yaml"
    (tmp_path / "key.pub").write_text(KEY + "\n")
    config.write_text(
        "ami-id: ami-0123456789abcdef0\ninstance_id: i-0123456789abcdef0\n"
        "kernel_id: aki-0123456789abcdef0\npublic_key_file: key.pub\n"
    )
    md = imds_serve.load_config(config)
    assert md.public_key == KEY and md.kernel_id == "aki-0123456789abcdef0"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = threading.Thread(target=imds_serve.serve, args=(port, config), daemon=True)
    t.start()
    body = b""
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(b"GET /latest/meta-data/kernel-id HTTP/1.1\r\nHost: x\r\n\r\n")
                while chunk := c.recv(4096):
                    body += chunk
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    assert body.endswith(b"\r\n\r\naki-0123456789abcdef0")


def test_bad_config_is_bad_input(tmp_path: Path) -> None:
    from builder.errors import BadInput
    from harness.imds.server import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: blue\n")
    with pytest.raises(BadInput, match="colour"):
        load_config(bad)
    with pytest.raises(BadInput):
        load_config(tmp_path / "missing.yaml")


def test_document_is_json_round_trip(tmp_path: Path) -> None:
    md = _md()
    doc = write_document(md, tmp_path / "m.marshal")
    assert marshal.loads(doc.read_bytes()) == document(md)
    assert json.loads(doc.with_suffix(".json").read_text()) == document(md)
