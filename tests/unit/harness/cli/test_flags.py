"""`boot`/`smoke` flags for what RunInstances takes (user-data, tags, role, MetadataOptions):
what they put into the served metadata, and EC2's limits enforced through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import make_parser
from harness.cli.flags import metadata_from_args
from harness.imds.document import InstanceMetadata, document
from harness.imds.protocol import answer, lookup
from tests.conftest import run_amilab


def _served(argv: list[str]) -> dict:
    args = make_parser().parse_args(argv)
    md = InstanceMetadata(
        ami_id="ami-1", instance_id="i-0123456789abcdef0", **metadata_from_args(args)
    )
    return document(md)


def test_flags_reach_the_metadata_service(tmp_path: Path) -> None:
    script = tmp_path / "ud.sh"
    script.write_bytes(b"#!/bin/sh\nprintf '\\377' > /x\n")  # bytes served unchanged
    tree = _served(
        ["smoke", "ami-1", "--user-data", str(script), "--tag", "Name=web", "--tag", "env=a=b",
         "--metadata-tags", "--iam-role", "app-role", "--instance-type", "t3.micro",
         "--http-tokens", "required", "--hop-limit", "2"]
    )  # fmt: skip
    assert lookup(tree, "/latest/user-data")[1] == script.read_bytes()
    assert lookup(tree, "/latest/meta-data/tags/instance/")[1] == "Name\nenv"
    assert lookup(tree, "/latest/meta-data/tags/instance/env")[1] == "a=b"
    assert lookup(tree, "/latest/meta-data/iam/security-credentials/")[1] == "app-role"
    assert lookup(tree, "/latest/meta-data/instance-type")[1] == "t3.micro"
    assert answer(b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n", tree).startswith(b"HTTP/1.1 401")


def test_tags_are_not_served_unless_enabled() -> None:
    tree = _served(["boot", "ami-1", "--tag", "Name=web"])
    assert lookup(tree, "/latest/meta-data/tags/instance/Name")[0] == 404
    assert lookup(tree, "/latest/user-data")[0] == 404  # no --user-data: none, as on EC2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tag", "novalue"], "expected KEY=VALUE"),
        (["--tag", "aws:x=1"], "reserved"),
        (["--tag", "a/b=1", "--metadata-tags"], "becomes a metadata path"),
        (["--tag", "k" * 129 + "=v"], "at most 128"),
        (["--hop-limit", "0"], "must be 1-64"),
        (["--iam-role", "bad role"], "not an IAM role name"),
        (["--user-data", "/nonexistent/ud"], "No such file"),
        (["--user-data", "BIG"], "at most 16 KB"),
        (["--instance-type", "huge"], "expected e.g. m1.small"),
    ],
)
@pytest.mark.parametrize("command", ["boot", "smoke"])
def test_bad_flags_exit_2_before_anything_runs(
    command: str, flags: list[str], message: str, tmp_path: Path, amilab_home: Path
) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (16 * 1024 + 1))
    flags = [str(big) if f == "BIG" else f for f in flags]
    # the image does not exist either: the flags must be refused before it is looked up
    r = run_amilab(command, "ami-0000000000000000f", *flags)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (amilab_home / "instances").exists() or not any(
        (amilab_home / "instances").iterdir()
    )
