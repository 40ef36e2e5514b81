"""What a launch writes into its instance's metadata: the AMI's record plus launch settings."""

from __future__ import annotations

import marshal
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from builder.images.registry import ImageRecord
from harness.imds.document import block_device_mapping
from harness.imds.protocol import answer, lookup
from harness.launch import accel
from harness.launch.instance import InstanceDir
from harness.launch.machine import Disk
from harness.launch.plan import LaunchPlan
from harness.launch.steps import Instance, LaunchOptions, StartMetadataService, WriteMetadata


def _record(image_id: str, image_type: str, **kw: object) -> ImageRecord:
    return ImageRecord(image_id=image_id, image_type=image_type, name=image_id, **kw)  # type: ignore[arg-type]


def test_block_device_mapping_names() -> None:
    mappings = [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8}},
        {"DeviceName": "/dev/xvdf", "Ebs": {"VolumeSize": 1}},
        {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"},
        {"DeviceName": "/dev/sdc", "VirtualName": "swap"},
        {"DeviceName": "/dev/sdd", "NoDevice": ""},
    ]
    assert block_device_mapping("/dev/xvda", mappings) == {
        "ami": "/dev/xvda",
        "root": "/dev/xvda",
        "ebs1": "/dev/xvdf",
        "ephemeral0": "/dev/sdb",
        "swap": "/dev/sdc",
    }
    store = [{"DeviceName": "sda1", "VirtualName": "ami"}]
    assert block_device_mapping("/dev/sda1", store) == {"ami": "sda1", "root": "/dev/sda1"}


def test_write_metadata_from_record_and_launch(tmp_path: Path) -> None:
    ami = _record(
        "ami-0123456789abcdef0",
        "machine",
        root_device_name="/dev/sda1",
        root_device_type="instance-store",
        block_device_mappings=[{"DeviceName": "sda1", "VirtualName": "ami"}],
        image_location="amilab-bundles/debian/image.manifest.xml",
    )
    plan = LaunchPlan(
        image=ami,
        profile="paravirtual",
        disk=Disk(tmp_path / "disk.raw", "raw"),
        kernel=_record("aki-0123456789abcdef0", "kernel"),
    )
    options = LaunchOptions(
        accelerator=accel.Accelerator("tcg", "test"),
        metadata={"user_data": b"#!/bin/sh\necho hi\n", "http_tokens": "required"},
    )
    inst = Instance(plan, options)
    inst.dir = InstanceDir("i-0123456789abcdef0", tmp_path)
    inst.public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample x"
    WriteMetadata().run(inst)
    tree = marshal.loads(inst.dir.metadata_doc.read_bytes())
    assert answer(b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n", tree).startswith(b"HTTP/1.1 401")
    assert lookup(tree, "/latest/meta-data/kernel-id")[1] == "aki-0123456789abcdef0"
    assert lookup(tree, "/latest/meta-data/block-device-mapping/ami")[1] == "sda1"
    assert lookup(tree, "/latest/meta-data/ami-manifest-path")[1].endswith("manifest.xml")
    assert lookup(tree, "/latest/user-data")[1] == b"#!/bin/sh\necho hi\n"


def _guest_exchange(command: str, cwd: Path, request: bytes, half_close: bool) -> bytes:
    """One guest connection as slirp makes it: `command` split at spaces, run in QEMU's
    working directory with one socket as its stdin, stdout and stderr; read until EOF."""
    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen(
            command.split(" "), cwd=cwd, stdin=theirs, stdout=theirs, stderr=theirs
        )
        theirs.close()
        ours.settimeout(5)
        ours.sendall(request)
        if half_close:
            ours.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := ours.recv(4096):  # a relay that does not close makes this time out
            data += chunk
    assert proc.wait(timeout=5) == 0
    return data


def _launched(tmp_path: Path, **metadata: object) -> Instance:
    plan = LaunchPlan(
        image=_record("ami-0123456789abcdef0", "machine"),
        profile="paravirtual",
        disk=Disk(tmp_path / "disk.raw", "raw"),
        kernel=_record("aki-0123456789abcdef0", "kernel"),
    )
    options = LaunchOptions(accelerator=accel.Accelerator("tcg", "test"), metadata=metadata)
    inst = Instance(plan, options)
    inst.dir = InstanceDir("i-0123456789abcdef0", tmp_path)
    WriteMetadata().run(inst)
    return inst


@pytest.mark.parametrize("half_close", [False, True])
def test_guest_connections_relay_to_the_harness_server(tmp_path: Path, half_close: bool) -> None:
    assert shutil.which("nc.openbsd"), "netcat-openbsd is missing: run scripts/setup.sh"
    inst = _launched(tmp_path, http_tokens="required")
    step = StartMetadataService()
    step.run(inst)
    try:
        assert inst.imds_command is not None and inst.imds_command.endswith(
            "nc.openbsd -U imds.sock"
        )
        put = b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"
        reply = _guest_exchange(inst.imds_command, tmp_path, put, half_close)
        token = reply.split(b"\r\n\r\n", 1)[1]
        get = b"GET /latest/meta-data/kernel-id HTTP/1.1\r\nX-aws-ec2-metadata-token: %s\r\n\r\n"
        t0 = time.monotonic()
        reply = _guest_exchange(inst.imds_command, tmp_path, get % token, half_close)
        # a relay that waits for the other side before closing (socat's -t) would show here
        assert time.monotonic() - t0 < 0.4
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(
            b"\r\n\r\naki-0123456789abcdef0"
        )
    finally:
        step.cleanup(inst)
    assert not (tmp_path / "imds.sock").exists()
    assert step.thread is not None and not step.thread.is_alive()


def test_without_the_relay_each_connection_runs_the_cgi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real environment lookup, on a PATH where nc.openbsd cannot be found
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    inst = _launched(tmp_path)
    step = StartMetadataService()
    step.run(inst)
    assert step.server is None and (tmp_path / "imds_cgi.py").exists()
    assert inst.imds_command is not None and "imds_cgi.py" in inst.imds_command
    get = b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n"
    reply = _guest_exchange(inst.imds_command, tmp_path, get, half_close=False)
    assert reply.endswith(b"\r\n\r\ni-0123456789abcdef0")
    step.cleanup(inst)
