"""Crash consistency (issue #29) through the API: `amilab api serve` killed with SIGKILL
while it serves a boto3 call (CreateSnapshot, DeleteSnapshot, CopyImage, CreateTags,
RunInstances), at time points spread over an unkilled call of the same action. After each
kill, with the server dead, the checks are test_crash.py's (`_check_after_kill`): fsck
reports only what --repair fixes and is clean after it, every image, snapshot and volume
that existed before keeps its digest and describe output; then the server is started again
(its start-up recovery runs) and the same call must succeed, or give EC2's refusal when the
killed call had finished.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from builder.images import volumes
from builder.images.shapes import local_account_id
from builder.state import fsck
from builder.state.pending import REASON
from harness.instances import store as istore
from tests.conftest import AMILAB, ROOT
from tests.integration import instances_helpers as live
from tests.integration.test_crash import (  # noqa: F401 - home is a fixture
    POINTS,
    TIMEOUT_S,
    Case,
    Home,
    _check_after_kill,
    _env,
    _report,
    _state,
    home,
)
from tests.integration.test_crash_commands import terminate_all


@dataclass
class Server:
    home: Home
    accounts: Path
    account: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    client: Any = None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.home.path.parent / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                [*AMILAB, "api", "serve", "--port", "0", "--accounts", str(self.accounts),
                 "--log"], cwd=ROOT, env=_env(self.home.path), stdout=subprocess.PIPE,
                stderr=log, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "serving EC2 at http://" in line, line
        url = line.split(" at ", 1)[1].split()[0].rstrip("/")
        self.client = boto3.client(
            "ec2", endpoint_url=url, region_name="us-east-1",
            aws_access_key_id=self.account["AccessKeyId"],
            aws_secret_access_key=self.account["SecretAccessKey"],
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                          connect_timeout=5, read_timeout=TIMEOUT_S),
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL, by its PID (this test's own process)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def call(self, action: str, params: dict[str, Any]) -> tuple[bool, str]:
        """(succeeded, what it said): the error's code and message, or the response."""
        try:
            out = getattr(self.client, action)(**params)
            # EC2 answers these with the AMI pending: the call's work ends when it is made
            made = self._made(out["ImageId"]) if action in _PENDING else None
        except ClientError as e:
            err = e.response.get("Error", {})
            return False, f"{err.get('Code')}: {err.get('Message')}"
        except BotoCoreError as e:  # the server died under the call
            return False, f"{type(e).__name__}: {e}"
        out.pop("ResponseMetadata", None)
        if made is not None and made["State"] != "available":
            return False, f"{out['ImageId']} {made['State']}: {made.get('StateReason')}"
        return True, json.dumps(out, default=str)

    def _made(self, image_id: str) -> dict[str, Any]:
        while True:
            (image,) = self.client.describe_images(ImageIds=[image_id])["Images"]
            if image["State"] != "pending":
                return dict(image)
            time.sleep(0.01)


_PENDING = ("copy_image", "create_image")


@dataclass
class ApiCase:
    name: str  # the action's EC2 name
    # boto3's method, its parameters and the resource it changes (if any)
    prepare: Callable[[Home], tuple[str, dict[str, Any], str | None]]
    refusal: str | None = None


def _fresh_snapshot(h: Home) -> str:
    return str(volumes.copy_snapshot(h.snapshot)["SnapshotId"])


CASES = [
    ApiCase("CreateSnapshot", lambda h: ("create_snapshot", {"VolumeId": h.volume}, None)),
    ApiCase("DeleteSnapshot",
            lambda h: ("delete_snapshot", {"SnapshotId": (s := _fresh_snapshot(h))}, s),
            "InvalidSnapshot.NotFound"),
    ApiCase("CopyImage", lambda h: ("copy_image", {
        "SourceImageId": h.ami, "SourceRegion": "us-east-1", "Name": h.fresh("api-copy")},
        None), "already in use"),
    ApiCase("CreateTags", lambda h: ("create_tags", {
        "Resources": [h.ami], "Tags": [{"Key": h.fresh("api"), "Value": "v"}]}, h.ami)),
    ApiCase("RunInstances", lambda h: ("run_instances", {
        "ImageId": h.ami, "MinCount": 1, "MaxCount": 1}, None)),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(home: Home) -> Iterator[Server]:  # noqa: F811
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMILAB_HOME", str(home.path))
        account = {**live.ACCOUNT, "AccountId": local_account_id()}  # the images' owner
        accounts = home.path.parent / "accounts.yaml"
        accounts.write_text(json.dumps({"accounts": [account]}))  # JSON is YAML
        srv = Server(home, accounts, account)
        srv.start()
        try:
            yield srv
        finally:
            srv.kill()
            terminate_all(home)


def _kill_during(
    srv: Server, action: str, params: dict[str, Any], delay: float, refusal: str | None
) -> bool:
    """Send the call and SIGKILL the server `delay` seconds later; False if it answered
    first (a repeated call may get EC2's refusal: a delete that was done)."""
    srv.start()
    answer: list[tuple[bool, str]] = []
    call = threading.Thread(target=lambda: answer.append(srv.call(action, params)))
    call.start()
    call.join(delay)
    if not call.is_alive():
        ok, said = answer[0]
        assert ok or (refusal and refusal in said), f"{action} failed unkilled: {said}"
        return False
    srv.kill()
    call.join()
    return True


def _timed(srv: Server, action: str, params: dict[str, Any]) -> float:
    srv.start()
    t0 = time.monotonic()
    ok, said = srv.call(action, params)
    assert ok, f"{action}: {said}"
    return time.monotonic() - t0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_killed_server_leaves_consistent_state(
    server: Server,
    case: ApiCase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    h = server.home
    monkeypatch.setenv("AMILAB_HOME", str(h.path))
    name = f"API {case.name}"
    tried = h.tried.setdefault(name, [])
    h.found = set()
    took = _timed(server, *case.prepare(h)[:2])
    for i in range(POINTS):
        delay = took * (i + 0.5) / POINTS
        for _ in range(10):  # a call the server outran is tried again, earlier, on a fresh target
            action, params, target = case.prepare(h)
            before = _state()
            if killed := _kill_during(server, action, params, delay, case.refusal):
                break
            delay *= 0.6
        tried.append(f"t={delay * 1000:.0f}ms" + ("" if killed else " (ended first)"))
        if killed:
            assert server.proc is not None and server.proc.poll() == -signal.SIGKILL

        def rerun(action: str = action, params: dict[str, Any] = params) -> tuple[bool, str]:
            server.start()  # the restarted server's start-up recovery runs first
            return server.call(action, params)

        _check_after_kill(h, Case(name, lambda _: ([], None), case.refusal), tried[-1],
                          target, before, [], rerun)  # fmt: skip
        if case.name == "RunInstances":
            terminate_all(h)
    _report(name, h, tried, capsys)


def test_create_image_answers_pending_and_a_killed_server_fails_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateImage answers with the AMI's ID while the AMI is pending (the server stops the
    instance and snapshots it after the reply), boto3's image_available waiter returns once
    it is made; killed while it is pending, the restarted server fails it with a
    StateReason, fsck --repair leaves nothing, and the name can be used again."""
    h = server.home
    monkeypatch.setenv("AMILAB_HOME", str(h.path))
    server.start()
    c = server.client
    iid = c.run_instances(ImageId=h.ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    live.wait_state({"env": {"AMILAB_HOME": str(h.path)}}, iid, "running")
    wait = {"Delay": 1, "MaxAttempts": 180}
    try:
        # a running instance is stopped first, and its guest answers no ACPI shutdown (it is
        # ended after AMILAB_STOP_TIMEOUT, 2 s): the AMI is pending at least that long
        made = c.create_image(InstanceId=iid, Name="api-made")["ImageId"]
        assert c.describe_images(ImageIds=[made])["Images"][0]["State"] == "pending"
        c.get_waiter("image_available").wait(ImageIds=[made], WaiterConfig=wait)
        (image,) = c.describe_images(ImageIds=[made])["Images"]
        snap = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        assert c.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]["State"] == "completed"
        live.wait_state({"env": {"AMILAB_HOME": str(h.path)}}, iid, "running")  # restarted

        lost = c.create_image(InstanceId=iid, Name="api-lost")["ImageId"]
        assert c.describe_images(ImageIds=[lost])["Images"][0]["State"] == "pending"
        server.kill()
        found = fsck.check().findings
        assert ("PendingWithoutProcess", lost) in {(f.kind, f.resource) for f in found}
        assert [f for f in found if f.kind not in fsck.REPAIRABLE] == []
        server.start()  # its start-up recovery fails what the killed server left pending
        c = server.client
        (image,) = c.describe_images(ImageIds=[lost])["Images"]
        assert image["State"] == "failed", image
        assert image["StateReason"] == {"Code": "Server.InternalError", "Message": REASON}
        with pytest.raises(WaiterError, match="failure state"):
            c.get_waiter("image_available").wait(ImageIds=[lost], WaiterConfig=wait)
        assert fsck.repair().findings == [] and fsck.check().findings == []
        _settled(h, iid)  # stopped, or still running if the kill came before the stop
        again = c.create_image(InstanceId=iid, Name="api-lost")["ImageId"]  # the name is free
        c.get_waiter("image_available").wait(ImageIds=[again], WaiterConfig=wait)
        _stop_recorded_but_not_signalled(h, c, iid)
    finally:
        terminate_all(h)


def _stop_recorded_but_not_signalled(h: Home, c: Any, iid: str) -> None:
    """A StopInstances killed between committing `stopping` and signalling the supervisor
    (the server above may die there): the supervisor finds it in the record and stops."""
    env = {"env": {"AMILAB_HOME": str(h.path)}}
    if live.describe(env, iid)["State"]["Name"] == "stopped":
        c.start_instances(InstanceIds=[iid])
        live.wait_state(env, iid, "running")

    def change(r: dict[str, Any]) -> None:
        istore.set_state(r, "stopping", istore.USER_SHUTDOWN)
        r["Amilab"]["Desired"] = "stop"

    istore.instances().update(iid, change)
    live.wait_state(env, iid, "stopped", timeout=120)


def _settled(h: Home, iid: str) -> None:
    env = {"env": {"AMILAB_HOME": str(h.path)}}
    deadline = time.monotonic() + 120
    while live.describe(env, iid)["State"]["Name"] not in ("running", "stopped"):
        assert time.monotonic() < deadline, live.describe(env, iid)["State"]
        time.sleep(0.5)
