"""Real metadata clients, as published, against `amilab imds serve` on the host (issue 5).

Each test starts the CLI itself on a free loopback port. The clients hard-code
169.254.169.254 to different degrees: botocore takes a base_url; the PyPI `ec2-metadata`
package has no option, so its URL attributes are reassigned after construction; Debian's
`ec2-metadata` script is copied with its METADATA_BASEURL line rewritten.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

AMILAB = Path(sys.executable).with_name("amilab")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample tool-author"
USER_DATA = b"#!/bin/sh\necho hello from user-data\n\x00\xff"
EC2_UTILS = Path("/usr/bin/ec2-metadata")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path: Path, extra: str) -> Iterator[str]:
    (tmp_path / "key.pub").write_text(KEY + "\n")
    (tmp_path / "user-data").write_bytes(USER_DATA)
    config = tmp_path / "instance.yaml"
    config.write_text(
        "ami_id: ami-0123456789abcdef0\ninstance_id: i-0123456789abcdef0\n"
        "kernel_id: aki-0123456789abcdef0\navailability_zone: eu-west-1b\n"
        "key_name: tool-author\npublic_key_file: key.pub\nuser_data_file: user-data\n" + extra
    )
    port = _free_port()
    proc = subprocess.Popen(
        [str(AMILAB), "imds", "serve", "--port", str(port), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"amilab imds serve did not start: {err}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def v2_only(tmp_path: Path) -> Iterator[str]:
    """An instance launched with HttpTokens=required and an instance profile."""
    yield from _serve(tmp_path, "http_tokens: required\niam_role: amilab-builder\n")


@pytest.fixture
def v1_allowed(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path, "")


def test_botocore_region_and_credentials(v2_only: str) -> None:
    from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher

    region = InstanceMetadataRegionFetcher(base_url=v2_only, env={}, timeout=5).retrieve_region()
    assert region == "eu-west-1"
    creds = InstanceMetadataFetcher(
        base_url=v2_only, env={}, timeout=5
    ).retrieve_iam_role_credentials()
    assert creds["role_name"] == "amilab-builder"
    assert creds["access_key"].startswith("ASIA") and creds["secret_key"] and creds["token"]
    assert creds["expiry_time"].endswith("Z")


def test_botocore_without_role_gets_nothing(v1_allowed: str) -> None:
    from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher

    fetcher = InstanceMetadataFetcher(base_url=v1_allowed, env={}, timeout=5)
    assert fetcher.retrieve_iam_role_credentials() == {}
    region = InstanceMetadataRegionFetcher(base_url=v1_allowed, env={}, timeout=5)
    assert region.retrieve_region() == "eu-west-1"


def test_pypi_ec2_metadata(v2_only: str) -> None:
    import ec2_metadata  # PyPI's ec2-metadata, in the test extra (pyproject.toml)

    md = ec2_metadata.EC2Metadata()
    # the package hard-codes http://169.254.169.254/latest/ in __init__ with no option
    md.service_url = f"{v2_only}/latest/"
    md.dynamic_url = f"{md.service_url}dynamic/"
    md.metadata_url = f"{md.service_url}meta-data/"
    md.userdata_url = f"{md.service_url}user-data/"
    assert md.instance_id == "i-0123456789abcdef0"
    assert md.kernel_id == "aki-0123456789abcdef0"
    assert md.ami_id == "ami-0123456789abcdef0"
    assert md.region == "eu-west-1" and md.availability_zone == "eu-west-1b"
    assert md.public_keys["tool-author"].openssh_key.strip() == KEY
    assert md.user_data == USER_DATA
    assert md.instance_identity_document["kernelId"] == "aki-0123456789abcdef0"
    assert md.instance_identity_document["ramdiskId"] is None
    assert md.iam_info is not None and md.iam_info["InstanceProfileArn"].endswith("amilab-builder")
    nic = md.network_interfaces[md.mac]
    assert nic.private_ipv4s == ["169.254.0.15"] and nic.device_number == 0


@pytest.mark.parametrize("fixture", ["v2_only", "v1_allowed"])
def test_amazon_ec2_utils_script(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    assert EC2_UTILS.exists(), f"{EC2_UTILS} is missing: install Debian's amazon-ec2-utils"
    base = request.getfixturevalue(fixture)
    script = tmp_path / "ec2-metadata"
    text = EC2_UTILS.read_text()
    assert 'METADATA_BASEURL="http://169.254.169.254"' in text
    script.write_text(text.replace("http://169.254.169.254", base, 1))
    script.chmod(0o755)

    def run(*args: str) -> str:
        out = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    assert run("--kernel-id") == "kernel-id: aki-0123456789abcdef0\n"
    assert run("--ramdisk-id") == "ramdisk-id: not available\n"
    assert run("--instance-id") == "instance-id: i-0123456789abcdef0\n"
    assert run("--ami-id") == "ami-id: ami-0123456789abcdef0\n"
    assert run("--availability-zone") == "placement: eu-west-1b\n"  # sic, its label
    assert "tool-author" in run("--public-keys")
