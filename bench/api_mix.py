"""The mixed load of issue 29's concurrency test, for bench/api.py: N boto3 clients (no
retries, so a server error shows) calling EC2's mutating and describing actions against one
server for a while; per call its latency, per server requests per second, p99 and errors.

`seed_amilab_image` registers the small AMI amilab's side starts from (a sparse raw disk,
as a build registers its disk); `seed_moto_image` does RegisterImage on moto.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

OPS = ("tag", "describe", "copy", "deregister", "snapshot", "delsnap", "run", "key")
WEIGHTS = (6, 4, 2, 2, 1, 1, 2, 2)
EXPECTED = {"DryRunOperation", "InvalidAMIID.NotFound"}  # answers a racing client may get


def client(url: str, key: str, secret: str) -> Any:
    return boto3.client(
        "ec2", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                      read_timeout=300, max_pool_connections=4),
    )  # fmt: skip


def seed_amilab_image(home: Path) -> str:
    """A small hvm AMI in `home` (AMILAB_HOME must name it): its ID."""
    from builder.ids import sparse_sha256
    from builder.images import factory
    from builder.images.records import LaunchSettings
    from builder.images.registry import Registry, store_artifact

    home.mkdir(parents=True, exist_ok=True)
    disk = home / "seed.raw"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
        f.write(os.urandom(4096))
    digest = sparse_sha256(disk)
    stored = store_artifact(disk, digest, ".raw")
    reg = factory.Registration("mix-base", "hvm", "/dev/xvda", "x86_64")
    ami = factory.machine_image(reg, digest, LaunchSettings(disk_size=64 << 20),
                                {"raw": str(stored)})  # fmt: skip
    return Registry().register([ami])[0].image_id


def seed_moto_image(c: Any) -> str:
    return str(c.register_image(Name="mix-base", RootDeviceName="/dev/xvda",
                                Architecture="x86_64")["ImageId"])  # fmt: skip


class Run:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {}
        self.server_errors = 0
        self.unexpected: list[str] = []
        self.copies: list[str] = []

    def call(self, fn: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            out = fn(**kw)
        except ClientError as e:
            out = None
            code = e.response["Error"]["Code"]
            status = e.response["ResponseMetadata"].get("HTTPStatusCode", 0)
            with self.lock:
                self.server_errors += status >= 500
                if code not in EXPECTED:
                    self.unexpected.append(f"{code}: {e}")
        except BotoCoreError as e:  # no EC2 answer at all (a web server's 500 page)
            out = None
            with self.lock:
                self.server_errors += 1
                self.unexpected.append(f"{type(e).__name__}: {str(e)[:200]}")
        with self.lock:
            self.latencies.setdefault(fn.__name__, []).append(time.perf_counter() - t)
        return out


def _loop(c: Any, n: int, run: Run, ami: str, vol: str, stop: float) -> None:
    rng = random.Random(n)
    snaps: list[str] = []
    i = 0
    while time.monotonic() < stop:
        i += 1
        op = rng.choices(OPS, weights=WEIGHTS)[0]
        if op == "tag":
            # one key per client (EC2 keeps at most 50 tags on a resource), a new value each time
            run.call(c.create_tags, Resources=[ami], Tags=[{"Key": f"c{n}", "Value": str(i)}])
        elif op == "describe":
            run.call(c.describe_images, Owners=["self"])
        elif op == "copy":
            got = run.call(c.copy_image, SourceImageId=ami, SourceRegion="us-east-1",
                           Name=f"mix-{n}-{i}")  # fmt: skip
            if got is not None:
                with run.lock:
                    run.copies.append(got["ImageId"])
        elif op == "deregister":
            with run.lock:
                victim = run.copies.pop(rng.randrange(len(run.copies))) if run.copies else None
            if victim is not None:
                run.call(c.deregister_image, ImageId=victim)
        elif op == "snapshot":
            got = run.call(c.create_snapshot, VolumeId=vol, Description=f"mix {n} {i}")
            if got is not None:
                snaps.append(got["SnapshotId"])
        elif op == "delsnap" and snaps:
            run.call(c.delete_snapshot, SnapshotId=snaps.pop(0))
        elif op == "run":
            run.call(c.run_instances, ImageId=ami, MinCount=1, MaxCount=1,
                     InstanceType="t3.micro", DryRun=True)  # fmt: skip
            run.call(c.terminate_instances, InstanceIds=["i-0123456789abcdef0"], DryRun=True)
        elif op == "key" and run.call(c.create_key_pair, KeyName=f"mix-{n}-{i}") is not None:
            run.call(c.delete_key_pair, KeyName=f"mix-{n}-{i}")


def mix(url: str, key: str, secret: str, ami: str, clients: int, seconds: float
        ) -> dict[str, Any]:  # fmt: skip
    """The mix against one server: requests per second, p99 and median in ms, errors."""
    setup = client(url, key, secret)
    vol = setup.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    run = Run()
    made = [client(url, key, secret) for _ in range(clients)]
    stop = time.monotonic() + seconds
    t0 = time.monotonic()
    threads = [threading.Thread(target=_loop, args=(made[n], n, run, ami, vol, stop))
               for n in range(clients)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    flat = sorted(x for lat in run.latencies.values() for x in lat)
    return {
        "Requests": len(flat),
        "ReqPerSec": len(flat) / wall,
        "P99Ms": _pct(flat, 0.99),
        "MedianMs": _pct(flat, 0.5),
        "ServerErrors": run.server_errors,
        "Unexpected": run.unexpected[:5],
        "PerAction": {
            name: {"Requests": len(lat), "P99Ms": _pct(sorted(lat), 0.99)}
            for name, lat in sorted(run.latencies.items())
        },  # fmt: skip
    }


def _pct(flat: list[float], q: float) -> float:
    return flat[min(len(flat) - 1, int(q * len(flat)))] * 1000 if flat else float("nan")
