"""IMDSv2 and EC2's tree/format details of the metadata service (issue 5, items 1-3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.imds import protocol as imds_cgi
from harness.imds.document import InstanceMetadata, document, write_document
from harness.imds.protocol import answer, lookup, make_token, token_ttl

NOW = 1_700_000_000.0


def _md(**kw: object) -> InstanceMetadata:
    base: dict[str, object] = dict(
        ami_id="ami-0123456789abcdef0",
        instance_id="i-0123456789abcdef0",
        public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample x",
        key_name="my-key",
        kernel_id="aki-0123456789abcdef0",
    )
    base.update(kw)
    return InstanceMetadata(**base)  # type: ignore[arg-type]


def _split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _req(tree: dict, method: str, path: str, now: float = NOW, **headers: str) -> tuple:
    lines = [f"{method} {path} HTTP/1.1", "Host: 169.254.169.254"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return _split(answer(("\r\n".join(lines) + "\r\n\r\n").encode(), tree, now=now))


def _token(tree: dict, ttl: int = 21600, now: float = NOW) -> str:
    status, headers, body = _req(
        tree, "PUT", "/latest/api/token", now, X_aws_ec2_metadata_token_ttl_seconds=str(ttl)
    )
    assert status == 200, body
    assert headers["x-aws-ec2-metadata-token-ttl-seconds"] == str(ttl)
    return body.decode()


def test_token_put_and_use() -> None:
    tree = document(_md(http_tokens="required"))
    token = _token(tree)
    assert len(token) == 56  # EC2's tokens are 56 characters too
    status, headers, body = _req(
        tree, "GET", "/latest/meta-data/kernel-id", X_aws_ec2_metadata_token=token
    )
    assert (status, body) == (200, b"aki-0123456789abcdef0")
    assert headers["server"] == "EC2ws" and headers["content-type"] == "text/plain"
    assert headers["connection"] == "close" and headers["content-length"] == "21"
    assert headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"


@pytest.mark.parametrize("ttl", ["0", "21601", "-5", "abc", "", "1.5", "²"])
def test_token_ttl_out_of_range_is_400(ttl: str) -> None:
    tree = document(_md())
    status, _, _ = _req(tree, "PUT", "/latest/api/token", X_aws_ec2_metadata_token_ttl_seconds=ttl)
    assert status == 400


def test_token_without_ttl_header_is_400() -> None:
    assert _req(document(_md()), "PUT", "/latest/api/token")[0] == 400


def test_token_ttl_bounds_accepted() -> None:
    tree = document(_md())
    _token(tree, 1)
    _token(tree, 21600)


def test_put_on_dated_path_is_403() -> None:
    tree = document(_md())
    for path in ("/2021-03-23/api/token", "/latest/meta-data/", "/1.0/api/token"):
        status, _, _ = _req(tree, "PUT", path, X_aws_ec2_metadata_token_ttl_seconds="60")
        assert status == 403, path


def test_put_through_a_proxy_is_refused() -> None:
    status, _, _ = _req(
        document(_md()),
        "PUT",
        "/latest/api/token",
        X_aws_ec2_metadata_token_ttl_seconds="60",
        X_Forwarded_For="10.0.0.1",
    )
    assert status == 403


def test_required_refuses_v1_and_expired_tokens() -> None:
    tree = document(_md(http_tokens="required"))
    assert _req(tree, "GET", "/latest/meta-data/instance-id")[0] == 401
    token = _token(tree, ttl=10)
    assert (
        _req(tree, "GET", "/latest/meta-data/", NOW + 9, X_aws_ec2_metadata_token=token)[0] == 200
    )
    ok = _req(tree, "GET", "/latest/meta-data/", NOW + 9, X_aws_ec2_metadata_token=token)
    assert ok[1]["x-aws-ec2-metadata-token-ttl-seconds"] == "1"
    late = _req(tree, "GET", "/latest/meta-data/", NOW + 10, X_aws_ec2_metadata_token=token)
    assert late[0] == 401 and late[1]["content-type"] == "text/html"


def test_optional_allows_v1_but_not_a_bad_token() -> None:
    tree = document(_md())
    assert _req(tree, "GET", "/latest/meta-data/instance-id")[2] == b"i-0123456789abcdef0"
    bad = _req(tree, "GET", "/latest/meta-data/instance-id", X_aws_ec2_metadata_token="forged")
    assert bad[0] == 401


def test_tokens_are_signed_with_the_instance_secret() -> None:
    one, other = _md(), _md()
    token = make_token(one.token_secret, 60, NOW)
    assert token_ttl(one.token_secret, token, NOW) == 60
    assert token_ttl(other.token_secret, token, NOW) is None
    # a token whose expiry was pushed later without re-signing is rejected
    import base64

    raw = bytearray(base64.b64decode(token))
    raw[7] ^= 0xFF
    assert token_ttl(one.token_secret, base64.b64encode(bytes(raw)).decode(), NOW) is None
    assert token_ttl(one.token_secret, "!!!", NOW) is None


def test_endpoint_disabled_is_403() -> None:
    tree = document(_md(http_endpoint="disabled"))
    assert _req(tree, "GET", "/latest/meta-data/")[0] == 403
    assert (
        _req(tree, "PUT", "/latest/api/token", X_aws_ec2_metadata_token_ttl_seconds="60")[0] == 403
    )


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="http_tokens"):
        _md(http_tokens="sometimes")
    with pytest.raises(ValueError, match="http_endpoint"):
        _md(http_endpoint="off")


def test_settings_are_not_reachable_by_any_path() -> None:
    tree = document(_md())
    for path in ("/imds", "//imds", "/%2Fimds", "/imds/token_secret"):
        assert lookup(tree, path)[0] == 404
    assert "imds" not in lookup(tree, "/")[1]


def test_token_across_per_connection_processes(tmp_path: Path) -> None:
    """slirp starts one process per connection: a token from one must work in the next."""
    doc = write_document(_md(http_tokens="required"), tmp_path / "metadata.marshal")

    def cgi(request: bytes) -> bytes:
        cmd = [sys.executable, "-I", "-S", imds_cgi.__file__, str(doc)]
        return subprocess.run(cmd, input=request, capture_output=True, timeout=30).stdout

    put = cgi(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 30\r\n\r\n")
    status, _, token = _split(put)
    assert status == 200
    got = cgi(
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\nX-aws-ec2-metadata-token: " + token + b"\r\n\r\n"
    )
    assert _split(got)[0] == 200 and got.endswith(b"ami-0123456789abcdef0")
    assert _split(cgi(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n"))[0] == 401


# --- tree and format (items 1-2) ---


def test_versions_limit_categories() -> None:
    tree = document(_md(ramdisk_id="ari-0123456789abcdef0"))
    assert lookup(tree, "/2007-12-15/meta-data/kernel-id")[0] == 404
    assert lookup(tree, "/2008-02-01/meta-data/ramdisk-id")[1] == "ari-0123456789abcdef0"
    assert lookup(tree, "/2009-04-04/meta-data/mac")[0] == 404
    assert lookup(tree, "/2011-01-01/meta-data/mac")[0] == 200
    assert lookup(tree, "/2008-02-01/dynamic/instance-identity/document")[0] == 404
    assert lookup(tree, "/2009-04-04/dynamic/instance-identity/document")[0] == 200
    assert "region" not in lookup(tree, "/2016-09-02/meta-data/placement/")[1]
    assert lookup(tree, "/latest/meta-data/placement/region") == (200, "us-east-1")
    assert "block-device-mapping/" not in lookup(tree, "/2007-10-10/meta-data/")[1]


def test_meta_data_leaves() -> None:
    tree = document(
        _md(
            block_device_mapping={"ami": "sda1", "root": "/dev/sda1", "ephemeral0": "sda2"},
            security_groups=["default", "web"],
        )
    )
    listing = lookup(tree, "/latest/meta-data/")[1].split("\n")
    for entry in (
        "ami-id", "ami-launch-index", "ami-manifest-path", "block-device-mapping/", "hostname",
        "instance-id", "instance-type", "kernel-id", "local-hostname", "local-ipv4", "mac",
        "network/", "placement/", "public-keys/", "reservation-id", "security-groups",
        "services/",
    ):  # fmt: skip
        assert entry in listing, entry
    assert lookup(tree, "/latest/meta-data/ami-launch-index") == (200, "0")
    assert lookup(tree, "/latest/meta-data/ami-manifest-path") == (200, "(unknown)")
    assert lookup(tree, "/latest/meta-data/block-device-mapping/")[1] == "ami\nephemeral0\nroot"
    assert lookup(tree, "/latest/meta-data/block-device-mapping/ephemeral0")[1] == "sda2"
    assert lookup(tree, "/latest/meta-data/security-groups")[1] == "default\nweb"
    assert lookup(tree, "/latest/meta-data/services/domain")[1] == "amazonaws.com"
    assert lookup(tree, "/latest/meta-data/reservation-id")[1] == "r-0123456789abcdef0"
    mac = lookup(tree, "/latest/meta-data/mac")[1]
    assert lookup(tree, "/latest/meta-data/network/interfaces/macs/")[1] == f"{mac}/"
    iface = f"/latest/meta-data/network/interfaces/macs/{mac}/"
    assert lookup(tree, iface + "local-ipv4s")[1] == "169.254.0.15"
    assert lookup(tree, iface + "device-number")[1] == "0"
    assert lookup(tree, "/latest/meta-data/public-keys")[1] == "0=my-key"
    assert lookup(tree, "/latest/meta-data/iam/")[0] == 404
    assert lookup(tree, "/latest/meta-data/tags/instance")[0] == 404


def test_user_data_bytes_and_absence() -> None:
    assert lookup(document(_md()), "/latest/user-data")[0] == 404
    assert "user-data" not in lookup(document(_md()), "/latest/")[1]
    raw = b"#!/bin/sh\n\x00\xff\xfe binary\n"
    tree = document(_md(user_data=raw))
    assert lookup(tree, "/latest/user-data") == (200, raw)
    assert lookup(tree, "//latest//user-data/") == (200, raw)
    assert lookup(tree, "/1.0/user-data") == (200, raw)
    assert lookup(tree, "/latest/")[1] == "dynamic\nmeta-data\nuser-data"
    status, headers, body = _req(tree, "GET", "/latest/user-data")
    assert body == raw and headers["content-length"] == str(len(raw))


def test_user_data_survives_the_document(tmp_path: Path) -> None:
    raw = bytes(range(256))
    doc = write_document(_md(user_data=raw), tmp_path / "m.marshal")
    cmd = [sys.executable, "-I", "-S", imds_cgi.__file__, str(doc)]
    out = subprocess.run(cmd, input=b"GET /latest/user-data HTTP/1.1\r\n\r\n", capture_output=True)
    assert out.stdout.endswith(b"\r\n\r\n" + raw)
    json.loads(doc.with_suffix(".json").read_text())  # readable copy still written


@pytest.mark.parametrize("kernel,ramdisk", [(None, None), ("aki-0123456789abcdef0", None)])
def test_identity_document(kernel: str | None, ramdisk: str | None) -> None:
    tree = document(_md(kernel_id=kernel, ramdisk_id=ramdisk, availability_zone="eu-west-1b"))
    assert lookup(tree, "/latest/dynamic/") == (200, "instance-identity/")
    status, body = lookup(tree, "/latest/dynamic/instance-identity/document")
    doc = json.loads(body)
    assert doc["kernelId"] == kernel and doc["ramdiskId"] is None
    assert doc["region"] == "eu-west-1" and doc["availabilityZone"] == "eu-west-1b"
    assert doc["instanceId"] == "i-0123456789abcdef0" and doc["imageId"] == "ami-0123456789abcdef0"
    assert '"kernelId" : ' in body  # EC2's " : " separator


def test_iam_and_tags() -> None:
    tree = document(
        _md(iam_role="builder", tags={"Name": "web-1", "env": "test"}, instance_metadata_tags=True)
    )
    assert lookup(tree, "/latest/meta-data/iam/") == (200, "info\nsecurity-credentials/")
    assert lookup(tree, "/latest/meta-data/iam/security-credentials/") == (200, "builder")
    creds = json.loads(lookup(tree, "/latest/meta-data/iam/security-credentials/builder")[1])
    assert creds["Code"] == "Success" and creds["AccessKeyId"].startswith("ASIA")
    assert {"SecretAccessKey", "Token", "Expiration"} <= set(creds)
    assert lookup(tree, "/2011-05-01/meta-data/iam/")[0] == 404
    assert lookup(tree, "/latest/meta-data/tags/instance") == (200, "Name\nenv")
    assert lookup(tree, "/latest/meta-data/tags/instance/Name") == (200, "web-1")
    assert lookup(tree, "/2020-10-27/meta-data/tags/")[0] == 404
