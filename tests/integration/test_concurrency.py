"""Many clients at once on one home (issue 29 item 5): `amilab api serve` driven by 16 boto3
clients for AMILAB_CONCURRENCY_SECONDS (180 by default) with a mix of CreateTags,
DescribeImages, CopyImage, DeregisterImage, CreateSnapshot, DeleteSnapshot,
RunInstances/TerminateInstances (DryRun: a boot would dominate), CreateKeyPair and
DeleteKeyPair, while CLI processes (`amilab tag`, `images`, `copy-image`, `deregister`,
`describe-snapshots`) change the same home. No build and no boot: the AMI is a small raw
disk registered through the library.

The result must show 0 server errors (HTTP 5xx) and 0 `database is locked` (answers, CLI
output, the server's log), every acknowledged tag present at the end (on the shared AMI,
snapshot and volume), and `amilab fsck --json` clean. Then a few rounds of a real
RunInstances racing a DeregisterImage of the same AMI: each gives one of EC2's outcomes
(InvalidAMIID.NotFound, or an instance whose supervisor finds the image and starts QEMU on
its files), never an instance without its image; the instance is terminated at once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import AMILAB, ROOT, run_amilab
from tests.integration import instances_helpers as live

pytestmark = pytest.mark.integration

CLIENTS = 16
SECONDS = float(os.environ.get("AMILAB_CONCURRENCY_SECONDS", "180"))
RACES = 3
DELAYS = ((0.0, 0.0), (0.3, 0.0), (0.0, 0.3))  # (launch, deregister) after the start signal
A = live.ACCOUNT
LOCKED = "database is locked"
ALLOWED = {  # EC2's answers a racing client can get; anything else fails the test
    "DryRunOperation",  # a permitted dry run
    "InvalidAMIID.NotFound",  # a copy deregistered by another client first
    "InvalidAMIID.Unavailable",
    "InvalidSnapshot.NotFound",  # a snapshot deleted by another client first
}


def seed_image(home: Path) -> str:
    """A small hvm AMI (a sparse raw disk with a few bytes written), registered through the
    library as a build would register it; its ID."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMILAB_HOME", str(home))
        mp.setenv("AMILAB_ACCOUNT_ID", A["AccountId"])
        from builder.ids import sparse_sha256
        from builder.images import factory
        from builder.images.records import LaunchSettings
        from builder.images.registry import Registry, store_artifact

        disk = home / "seed.raw"
        home.mkdir(parents=True, exist_ok=True)
        with disk.open("wb") as f:
            f.truncate(64 << 20)
            f.write(os.urandom(4096))
        digest = sparse_sha256(disk)
        stored = store_artifact(disk, digest, ".raw")
        reg = factory.Registration("conc-base", "hvm", "/dev/xvda", "x86_64")
        ami = factory.machine_image(
            reg, digest, LaunchSettings(disk_size=64 << 20), {"raw": str(stored)}
        )
        (ami,) = Registry().register([ami])
        return ami.image_id


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("conc-home")
    env = {
        "AMILAB_HOME": str(home),
        "AMILAB_ACCOUNT_ID": A["AccountId"],
        "AMILAB_STOP_TIMEOUT": "5",
    }
    ami = seed_image(home)
    accounts = home / "accounts.yaml"
    accounts.write_text(json.dumps({"accounts": [A]}))
    log = home / "server.log"
    with log.open("w") as err:
        server = subprocess.Popen(
            [*AMILAB, "api", "serve", "--port", "0", "--accounts", str(accounts), "--log"],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    assert server.stdout is not None
    line = server.stdout.readline()
    assert "serving EC2 at http://" in line, line + log.read_text()
    url = line.split(" at ", 1)[1].split()[0].rstrip("/")
    yield {"home": home, "env": env, "url": url, "ami": ami, "log": log, "server": server}
    server.terminate()
    server.wait(timeout=30)


def ec2(api: dict) -> Any:
    """A client that never retries: a 5xx must show, not be hidden by a second attempt."""
    return boto3.client(
        "ec2", endpoint_url=api["url"], region_name="us-east-1",
        aws_access_key_id=A["AccessKeyId"], aws_secret_access_key=A["SecretAccessKey"],
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                      read_timeout=300, max_pool_connections=4),
    )  # fmt: skip


class Tally:
    """What the clients saw: calls per action, refusals by code, server errors, and every
    tag acknowledged (resource, key, value)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.tags: list[tuple[str, str, str]] = []
        self.copies: list[str] = []  # AMIs copied and not yet deregistered
        self.snaps: list[str] = []  # snapshots made and not yet deleted
        self.done: Counter[str] = Counter()  # "DeregisterImage ami-…": successes

    def call(self, action: str, fn: Any, **kw: Any) -> Any:
        try:
            out = fn(**kw)
        except ClientError as e:
            code = e.response["Error"]["Code"]
            status = e.response["ResponseMetadata"].get("HTTPStatusCode", 0)
            with self.lock:
                self.calls[action] += 1
                self.codes[f"{action} {code}"] += 1
                if status >= 500 or code not in ALLOWED or LOCKED in str(e):
                    self.failures.append(f"{action} {status} {code}: {e}")
            return None
        with self.lock:
            self.calls[action] += 1
        return out

    def finish(self, action: str, victim: str, pool: list[str], fn: Any, **kw: Any) -> None:
        """Delete `victim` (from `pool`, where other clients may pick it at once): at most
        one of them may succeed, as on EC2."""
        if self.call(action, fn, **kw) is not None:
            with self.lock:
                self.done[f"{action} {victim}"] += 1
                if victim in pool:
                    pool.remove(victim)


def client_loop(api: dict, n: int, tally: Tally, shared: dict, stop: float) -> None:
    c = ec2(api)
    rng = random.Random(n)
    i = 0
    while time.monotonic() < stop:
        i += 1
        op = rng.choices(
            ["tag", "describe", "copy", "deregister", "snapshot", "delsnap", "run", "key"],
            weights=[6, 4, 2, 2, 1, 1, 2, 2],
        )[0]
        if op == "tag":
            target = rng.choice([api["ami"], api["ami"], shared["snap"], shared["vol"]])
            # one key per client (EC2 keeps at most 50 tags on a resource), a new value
            # each time: a lost update shows as the key missing or holding an older value
            key, value = f"c{n}", f"v{i}"
            ok = tally.call("CreateTags", c.create_tags, Resources=[target],
                            Tags=[{"Key": key, "Value": value}])  # fmt: skip
            if ok is not None:
                with tally.lock:
                    tally.tags.append((target, key, value))
        elif op == "describe":
            tally.call("DescribeImages", c.describe_images, Owners=["self"])
        elif op == "copy":
            got = tally.call("CopyImage", c.copy_image, SourceImageId=api["ami"],
                             SourceRegion="us-east-1", Name=f"conc-{n}-{i}")  # fmt: skip
            if got is not None:
                with tally.lock:
                    tally.copies.append(got["ImageId"])
        elif op == "deregister":
            with tally.lock:  # any client's copy: two may race for one (one gets NotFound)
                victim = rng.choice(tally.copies) if tally.copies else None
            if victim is not None:
                tally.finish("DeregisterImage", victim, tally.copies, c.deregister_image,
                             ImageId=victim)  # fmt: skip
        elif op == "snapshot":
            got = tally.call("CreateSnapshot", c.create_snapshot, VolumeId=shared["vol"],
                             Description=f"conc {n} {i}")  # fmt: skip
            if got is not None:
                with tally.lock:
                    tally.snaps.append(got["SnapshotId"])
        elif op == "delsnap":
            with tally.lock:  # any client's: two may race for one (one gets NotFound)
                victim = rng.choice(tally.snaps) if tally.snaps else None
            if victim is not None:
                tally.finish("DeleteSnapshot", victim, tally.snaps, c.delete_snapshot,
                             SnapshotId=victim)  # fmt: skip
        elif op == "run":
            with tally.lock:
                image = rng.choice(tally.copies) if tally.copies else api["ami"]
            tally.call("RunInstances", c.run_instances, ImageId=image, MinCount=1,
                       MaxCount=1, InstanceType="t3.micro", DryRun=True)  # fmt: skip
            tally.call("TerminateInstances", c.terminate_instances,
                       InstanceIds=["i-0123456789abcdef0"], DryRun=True)  # fmt: skip
        elif op == "key":
            name = f"conc-{n}-{i}"
            if tally.call("CreateKeyPair", c.create_key_pair, KeyName=name) is not None and (
                rng.random() < 0.5
            ):
                tally.call("DeleteKeyPair", c.delete_key_pair, KeyName=name)


def cli_loop(api: dict, n: int, tally: Tally, stop: float) -> None:
    """CLI processes on the same home: each command's exit and output are checked."""
    i = 0
    while time.monotonic() < stop:
        i += 1
        key, value = f"cli{n}", f"w{i}"
        steps: list[tuple[str, ...]] = [
            ("tag", api["ami"], f"{key}={value}"),
            ("images", "--json"),
            ("copy-image", api["ami"], "--name", f"cli-{n}-{i}", "--json"),
            ("describe-snapshots", "--json"),
        ]
        for args in steps:
            res = run_amilab(*args, env=api["env"], timeout=300)
            with tally.lock:
                tally.calls[f"cli {args[0]}"] += 1
                if res.returncode != 0 or LOCKED in res.stdout + res.stderr:
                    tally.failures.append(f"amilab {' '.join(args)}: {res.returncode} "
                                          f"{res.stderr.strip()[-300:]}")  # fmt: skip
                elif args[0] == "tag":
                    tally.tags.append((api["ami"], key, value))
                elif args[0] == "copy-image":
                    copy = json.loads(res.stdout)["ImageId"]
                    tally.copies.append(copy)
        with tally.lock:
            victim = tally.copies[0] if tally.copies else None
        if victim is not None:  # the oldest copy: API clients may deregister it at once
            res = run_amilab("deregister", victim, env=api["env"], timeout=300)
            with tally.lock:
                tally.calls["cli deregister"] += 1
                if res.returncode == 0:
                    tally.done[f"DeregisterImage {victim}"] += 1
                    if victim in tally.copies:
                        tally.copies.remove(victim)
                elif res.returncode != 2 or "no such image" not in res.stderr:
                    tally.failures.append(f"amilab deregister: {res.returncode} {res.stderr}")


def test_many_clients(api: dict) -> None:
    c = ec2(api)
    vol = c.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    snap = c.create_snapshot(VolumeId=vol, Description="shared")["SnapshotId"]
    shared = {"vol": vol, "snap": snap}
    tally = Tally()
    stop = time.monotonic() + SECONDS
    t0 = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(api, n, tally, shared, stop))
               for n in range(CLIENTS)]  # fmt: skip
    threads += [threading.Thread(target=cli_loop, args=(api, n, tally, stop)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    total = sum(tally.calls.values())
    print(f"{CLIENTS} clients and 2 CLI loops for {wall:.0f} s: {total} calls "
          f"({total / wall:.1f}/s); {dict(sorted(tally.calls.items()))}; "
          f"refusals {dict(tally.codes)}; tags acknowledged {len(tally.tags)}")  # fmt: skip
    assert not tally.failures, "\n".join(tally.failures[:20])
    twice = [what for what, n in tally.done.items() if n > 1]
    assert not twice, f"deleted more than once: {twice[:10]}"
    assert tally.calls["CreateTags"] > 0 and tally.calls["CopyImage"] > 0

    # every acknowledged tag is there, as the API and the CLI show it: each client's key
    # holds the last value it was acknowledged for (a client's calls come one at a time)
    want: dict[str, dict[str, str]] = {}
    for resource, key, value in tally.tags:  # in acknowledgement order per client
        want.setdefault(resource, {})[key] = value
    (image,) = c.describe_images(ImageIds=[api["ami"]])["Images"]
    have = {
        api["ami"]: {t["Key"]: t["Value"] for t in image.get("Tags", [])},
        snap: {t["Key"]: t["Value"] for t in
               c.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0].get("Tags", [])},
        vol: {t["Key"]: t["Value"] for t in
              c.describe_volumes(VolumeIds=[vol])["Volumes"][0].get("Tags", [])},
    }  # fmt: skip
    for resource, tags in want.items():
        lost = {k: v for k, v in tags.items() if have[resource].get(k) != v}
        assert not lost, f"{resource}: acknowledged tags lost: {lost} (have {have[resource]})"
    res = run_amilab("images", "--json", env=api["env"], check=True)
    (cli_image,) = [i for i in json.loads(res.stdout)["Images"] if i["ImageId"] == api["ami"]]
    assert {t["Key"]: t["Value"] for t in cli_image.get("Tags", [])} == have[api["ami"]]

    log = api["log"].read_text()
    statuses = Counter(ln.split()[3] for ln in log.splitlines()
                       if ln.startswith("amilab api: ") and len(ln.split()) > 3)  # fmt: skip
    print(f"server log: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert LOCKED not in log and "Traceback" not in log, log[-3000:]
    assert not [s for s in statuses if s.startswith("5")], dict(statuses)
    check_fsck(api)


def check_fsck(api: dict) -> None:
    """`amilab fsck --json` finds nothing."""
    res = run_amilab("fsck", "--json", env=api["env"], timeout=600)
    assert res.returncode == 0, f"fsck: {res.returncode}\n{res.stdout[-3000:]}{res.stderr}"
    assert json.loads(res.stdout)["Findings"] == []


def test_deregister_racing_launch(api: dict) -> None:
    """A DeregisterImage and a real RunInstances of the same AMI at once: either the launch
    is refused (InvalidAMIID.NotFound) or the instance's supervisor finds the image and
    starts QEMU on its files. The instance is terminated right away (no boot waited for)."""
    c = ec2(api)
    outcomes: Counter[str] = Counter()
    for n in range(RACES):
        ami = c.copy_image(SourceImageId=api["ami"], SourceRegion="us-east-1",
                           Name=f"race-{n}")["ImageId"]  # fmt: skip
        # EC2's copy is pending until it is made: launched only once available
        c.get_waiter("image_available").wait(ImageIds=[ami], WaiterConfig={"Delay": 1})
        got = race(api, ami, *DELAYS[n % len(DELAYS)])
        if isinstance(got, str):
            assert got == "InvalidAMIID.NotFound", got
            outcomes["refused"] += 1
            continue
        iid = got["Instances"][0]["InstanceId"]
        try:
            rec = started(api, iid)
            assert rec["Amilab"].get("QemuPid"), rec.get("StateReason")
            outcomes["launched"] += 1
        finally:
            c.terminate_instances(InstanceIds=[iid])
            live.wait_state(api, iid, "terminated", timeout=120)
    print(f"deregister racing launch: {dict(outcomes)}")
    log = api["log"].read_text()
    assert LOCKED not in log and "Traceback" not in log, log[-3000:]
    check_fsck(api)


def race(api: dict, ami: str, launch_delay: float, deregister_delay: float) -> Any:
    """RunInstances and DeregisterImage of `ami` at once (each after its delay): the
    launch's answer, or its error code."""
    got: dict[str, Any] = {}
    barrier = threading.Barrier(2)
    launcher, deregisterer = ec2(api), ec2(api)

    def launch() -> None:
        barrier.wait()
        time.sleep(launch_delay)
        try:
            got["run"] = launcher.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                                                InstanceType="t3.micro")  # fmt: skip
        except ClientError as e:
            got["run"] = e.response["Error"]["Code"]

    def deregister() -> None:
        barrier.wait()
        time.sleep(deregister_delay)
        got["dereg"] = deregisterer.deregister_image(ImageId=ami)

    threads = [threading.Thread(target=launch), threading.Thread(target=deregister)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "dereg" in got, "DeregisterImage failed"
    return got["run"]


def started(api: dict, iid: str, timeout: float = 180) -> dict:
    """The instance record once its supervisor started QEMU, or failed to."""
    deadline = time.monotonic() + timeout
    while True:
        rec = live.record(api, iid)
        if rec["Amilab"].get("QemuPid") or rec["State"]["Name"] not in ("pending",):
            return rec
        assert time.monotonic() < deadline, f"{iid}: no QEMU after {timeout} s: {rec}"
        time.sleep(0.3)
