"""The library's errors as EC2's answers: a full disk is InsufficientCapacity (503), read by
botocore's own EC2 parser from the XML the server sends; other failures keep their codes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import botocore.session
import pytest
from botocore.parsers import create_parser

from builder.errors import BadInput, DiskFull, EnvironmentProblem
from builder.state import diskfull
from harness.api import protocol
from harness.api.errors import from_library


def _as_boto_sees_it(status: int, body: bytes) -> dict:
    op = botocore.session.get_session().get_service_model("ec2").operation_model("DescribeRegions")
    reply = {"status_code": status, "headers": {}, "body": body}
    return create_parser("ec2").parse(reply, op.output_shape)


def test_a_full_disk_is_insufficient_capacity_with_503(tmp_path: Path) -> None:
    with pytest.raises(DiskFull) as refused:  # a real refusal: more than any disk has
        diskfull.require_space(tmp_path, 1 << 62, "the import of big.raw")
    err = from_library(refused.value)
    assert (err.code, err.status) == ("InsufficientCapacity", 503)
    assert str(diskfull.mount_point(tmp_path)) in err.message
    assert "the import of big.raw" in err.message
    parsed = _as_boto_sees_it(err.status, protocol.error("ec2", err, "req-1"))
    assert parsed["Error"]["Code"] == "InsufficientCapacity"
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_sqlites_full_database_is_a_full_disk(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "small.sqlite")
    conn.execute("CREATE TABLE t (v BLOB)")
    conn.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.OperationalError) as e:
        conn.execute("INSERT INTO t VALUES (zeroblob(1 << 20))")
    conn.close()
    full = diskfull.from_exception(e.value, tmp_path, "a record")
    assert full is not None and from_library(full).code == "InsufficientCapacity"


def test_other_failures_keep_their_codes() -> None:
    assert from_library(BadInput("InvalidAMIID.NotFound: no such image")).status == 400
    assert from_library(BadInput("no such thing")).code == "InvalidParameterValue"
    other = from_library(EnvironmentProblem("qemu-img is missing"))
    assert (other.code, other.status) == ("InternalError", 500)
