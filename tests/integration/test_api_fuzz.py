"""2,000 well-formed requests with fuzzed values, generated from botocore's EC2 model for
every action the server implements, and 200 malformed ones: none gets a 500, every one gets
an answer in EC2's shape, and the registry is unchanged. Values name IDs that do not exist
(so RunInstances never boots anything) and actions that would make something from nothing
(CreateKeyPair, CreateSecurityGroup) are left out: the point is that refusals change
nothing, whatever the input."""

from __future__ import annotations

import datetime
import http.client
import os
import random
import sqlite3
import string
from collections import Counter
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, create_request_object, prepare_request_dict
from botocore.credentials import Credentials
from botocore.serialize import create_serializer

from builder.images.shapes import acting_as
from harness.api.actions import ACTIONS
from harness.api.protocol import operation
from tests.unit.builder.images.test_lifecycle import register_fake
from tests.unit.harness.api.conftest import (
    A,
    api,  # noqa: F401 - the server fixture
)

pytestmark = pytest.mark.integration  # no guest, but 2,200 requests take a minute or two

WELL_FORMED, MALFORMED = 2000, 200
# botocore's own, without its client-side validation: the server is what checks here
_SERIALIZER = create_serializer("ec2", include_validation=False)
# they succeed on any name: not refusals, so not what this test is about
MAKES_FROM_NOTHING = {"CreateKeyPair", "CreateSecurityGroup", "ImportKeyPair"}
PREFIXES = ("ami", "aki", "ari", "i", "vol", "snap", "sg", "vpc", "subnet", "key", "r")
TEXT = ["", " ", "*", "?", "a" * 300, "ünïcödé", "<x>&'\"", "%00", "../../etc/passwd",
        "self", "all", "true", "-1", "us-east-1a", "/dev/sdf", "ephemeral0", "none"]  # fmt: skip


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def value(self, shape: Any, name: str, depth: int = 0) -> Any:
        t = shape.type_name
        if t == "structure":
            out = {}
            for m, ms in shape.members.items():
                if m in shape.required_members or (depth < 4 and self.r.random() < 0.4):
                    out[m] = self.value(ms, m, depth + 1)
            return out
        if t == "list":
            return [self.value(shape.member, name, depth + 1) for _ in range(self.r.randint(0, 3))]
        if t == "map":
            return {self.text(): self.value(shape.value, name, depth + 1) for _ in range(2)}
        if t == "boolean":
            return self.r.random() < 0.5
        if t in ("integer", "long"):
            return self.r.choice([-1, 0, 1, 2, 7, 21, 2**31 - 1, 10**12])
        if t in ("float", "double"):
            return self.r.choice([0.0, -1.5, 1e300])
        if t == "timestamp":
            return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        if t == "blob":
            return self.r.randbytes(self.r.randint(0, 40))
        if shape.enum and self.r.random() < 0.7:
            return self.r.choice(shape.enum)
        if name.endswith(("Id", "Ids")) or self.r.random() < 0.3:
            return f"{self.r.choice(PREFIXES)}-{self.r.randbytes(9).hex()[:17]}"
        return self.text()

    def text(self) -> str:
        if self.r.random() < 0.5:
            return self.r.choice(TEXT)
        return "".join(self.r.choice(string.printable) for _ in range(self.r.randint(1, 20)))


def _signed(url: str, body: bytes, headers: dict[str, str] | None = None) -> dict[str, str]:
    req = AWSRequest(
        "POST",
        url + "/",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            **(headers or {}),
        },
    )
    SigV4Auth(Credentials(A.access_key_id, A.secret_access_key), "ec2", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def _post(
    conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn.request("POST", "/", body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _rows(home: Any) -> list[str]:
    with sqlite3.connect(home / "registry.sqlite") as db:
        return [line for line in db.iterdump() if line.startswith("INSERT")]


def _well_formed(f: Fuzzer, url: str) -> tuple[str, bytes, dict[str, str]]:
    action = f.r.choice(sorted(set(ACTIONS) - MAKES_FROM_NOTHING))
    op = operation("ec2", action)
    assert op is not None
    params = f.value(op.input_shape, action) if op.input_shape else {}
    if action == "CreateVolume":
        params["SnapshotId"] = f"snap-{f.r.randbytes(9).hex()[:17]}"  # never from nothing
    request = _SERIALIZER.serialize_to_request(params, op)
    prepare_request_dict(request, url)
    prepared = create_request_object(request).prepare()
    body = prepared.body if isinstance(prepared.body, bytes) else (prepared.body or "").encode()
    return action, body, _signed(url, body)


def _malformed(f: Fuzzer, url: str, i: int) -> tuple[str, bytes, dict[str, str]]:
    kind = i % 10
    base = f"Action={f.r.choice(sorted(ACTIONS))}&Version=2016-11-15"
    if kind == 0:
        body = f"Action=Launch{f.r.randint(0, 999)}&Version=2016-11-15".encode()
    elif kind == 1:
        body = b"Version=2016-11-15&ImageId.1=ami-12345678"
    elif kind == 2:
        body = (base + "&%zz=1&=&&a=%").encode()
    elif kind == 3:
        body = base.encode() + bytes(f.r.randbytes(30))
    elif kind == 4:
        body = (base + "&MinCount=many&MaxCount=1.5&Size=x&DryRun=maybe").encode()
    elif kind == 5:
        body = (base + "&ImageId.0=ami-1&ImageId.x=2&Filter.1.Value.1=x").encode()
    elif kind == 6:
        body = (base + "&UserData=%%%notbase64").encode()
    elif kind == 7:  # signed, then changed
        body = base.encode()
        headers = _signed(url, body)
        return (
            "tampered",
            body + b"&ImageId.1=ami-0123456789abcdef0",
            {**headers, "Content-Length": str(len(body) + 32)},
        )
    elif kind == 8:  # not signed at all
        return "unsigned", base.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    else:
        body = (base + "&" + "&".join(f"Filter.{n}.Name=x" for n in range(1, 300))).encode()
    return "malformed", body, _signed(url, body)


def test_fuzzed_and_malformed_requests_get_no_500_and_change_nothing(api: dict) -> None:  # noqa: F811
    with acting_as(A.account_id):
        register_fake(api["home"])
    before = _rows(api["home"])
    url = api["url"]
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    f = Fuzzer(int(os.environ.get("AMILAB_FUZZ_SEED", "16")))  # another seed: other requests
    codes: Counter[str] = Counter()
    for i in range(WELL_FORMED + MALFORMED):
        what, body, headers = _well_formed(f, url) if i < WELL_FORMED else _malformed(f, url, i)
        status, reply = _post(conn, body, headers)
        assert status < 500, f"{what}: {status}\n{body[:400]!r}\n{reply[:600]!r}"
        if status >= 400:
            assert b"<Errors><Error><Code>" in reply and b"<RequestID>" in reply, reply[:400]
            codes[reply.split(b"<Code>")[1].split(b"</Code>")[0].decode()] += 1
        else:
            codes["200"] += 1
    conn.close()
    print(dict(codes.most_common()))
    assert codes["200"] > 100 and len(codes) > 10  # the answers vary: the input reached actions
    assert _rows(api["home"]) == before
