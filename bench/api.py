#!/usr/bin/env python3
"""API benchmark: DescribeImages and DescribeInstances against `amilab api serve` and against
moto's server (`python -m moto.server`), the same requests, the same number of images and
instances, in one run.

Each server runs as its own process. amilab's registry gets N images (small synthetic AKIs
registered by content: describe-images reads them as it reads any) and M terminated
instances (records; no guest); moto gets N images by RegisterImage (its default AMIs off:
MOTO_AMIS_PATH is an empty list) and M instances run and terminated. The clients replay one
SigV4-signed request per action over keep-alive connections (the signature stays valid for
minutes), so the client's own cost is small and equal for both. At 1 and at 32 concurrent
clients: requests per second and p99 latency. Ratio = amilab / moto for req/s (target >= 1)
and moto / amilab for p99 (target >= 1).

Then the mix of issue 29's concurrency test: 16 boto3 clients (no retries) for --mix-seconds
each, one server after the other, calling CreateTags, DescribeImages, CopyImage,
DeregisterImage (of a copy), CreateSnapshot, DeleteSnapshot, RunInstances and
TerminateInstances with DryRun, CreateKeyPair and DeleteKeyPair in the same proportions
(each client's choices come from the same seed on both servers). amilab's AMI is a small
raw disk registered as a build would; moto's is registered by RegisterImage. Requests per
second, p99 latency and server errors (5xx) per server, and the two ratios as above.

Usage: .venv/bin/python bench/api.py [--images 100] [--instances 20] [--seconds 5]
                                     [--mix-seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from bench import api_mix  # noqa: E402

KEY, SECRET, ACCOUNT = "AKIAAMILABBENCH00001", "bench-secret", "123456789012"
ACTIONS = {
    "DescribeImages": "Action=DescribeImages&Version=2016-11-15&Owner.1=self",
    "DescribeInstances": "Action=DescribeInstances&Version=2016-11-15",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def seed_amilab(home: Path, images: int, instances: int) -> None:
    os.environ["AMILAB_HOME"] = str(home)
    os.environ["AMILAB_ACCOUNT_ID"] = ACCOUNT
    from builder.ids import file_sha256, random_id
    from builder.images import factory
    from builder.images.records import KernelSettings, now_iso
    from builder.images.registry import Registry
    from harness.instances import store

    files = home / "files"
    files.mkdir(parents=True)
    recs = []
    for n in range(images):
        f = files / f"vmlinuz-{n}"
        f.write_bytes(os.urandom(4096))
        recs.append(factory.content_image(file_sha256(f), f"bench-kernel-{n}", str(f),
                                          KernelSettings(), release=f"6.1.0-{n}"))  # fmt: skip
    Registry().register(recs)
    for _ in range(instances):
        iid = random_id("i")
        rec = {
            "InstanceId": iid, "ImageId": recs[0].image_id, "State": store.state("terminated"),
            "StateTransitionReason": "", "LaunchTime": now_iso(), "InstanceType": "m1.small",
            "Architecture": "x86_64", "VirtualizationType": "paravirtual",
            "Placement": {"AvailabilityZone": "us-east-1a", "Tenancy": "default"},
            "RootDeviceName": "/dev/sda1", "RootDeviceType": "ebs", "BlockDeviceMappings": [],
            "PublicIpAddress": "127.100.0.2", "PrivateIpAddress": "127.100.0.2", "Tags": [],
            "Amilab": {"OwnerId": ACCOUNT, "Dir": str(home / "gone"),
                       "ReservationId": random_id("r")},
        }  # fmt: skip
        store.instances().insert(iid, rec)


def seed_moto(url: str, images: int, instances: int) -> None:
    ec2 = boto3.client("ec2", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id=KEY, aws_secret_access_key=SECRET)  # fmt: skip
    ids = []
    for n in range(images):
        ids.append(ec2.register_image(Name=f"bench-{n}", RootDeviceName="/dev/sda1",
                                      Architecture="x86_64")["ImageId"])  # fmt: skip
    if instances:
        run = ec2.run_instances(ImageId=ids[0], MinCount=instances, MaxCount=instances)
        ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in run["Instances"]])


def signed(url: str, body: str) -> tuple[bytes, dict[str, str]]:
    req = AWSRequest(
        "POST",
        url + "/",
        data=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(Credentials(KEY, SECRET), "ec2", "us-east-1").add_auth(req)
    return body.encode(), dict(req.headers.items())


def load(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float
         ) -> dict[str, Any]:  # fmt: skip
    host = url.removeprefix("http://")
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients)

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(host, timeout=60)
        barrier.wait()
        while time.monotonic() < stop:
            t = time.perf_counter()
            conn.request("POST", "/", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            latencies[n].append(time.perf_counter() - t)
            if resp.status != 200:
                errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    flat = sorted(x for lat in latencies for x in lat)
    p99 = flat[min(len(flat) - 1, int(0.99 * len(flat)))] if flat else float("nan")
    return {
        "Requests": len(flat),
        "ReqPerSec": len(flat) / wall,
        "P99Ms": p99 * 1000,
        "MedianMs": statistics.median(flat) * 1000 if flat else None,
        "Errors": errors[0],
    }


def run_mix(servers: dict[str, str], home: Path, clients: int, seconds: float
            ) -> dict[str, Any]:  # fmt: skip
    """The concurrency test's mix on each server in turn (amilab's AMI registered in its
    home while it serves, as a build would), and the ratios."""
    amis = {
        "amilab": api_mix.seed_amilab_image(home),
        "moto": api_mix.seed_moto_image(api_mix.client(servers["moto"], KEY, SECRET)),
    }
    got = {name: api_mix.mix(url, KEY, SECRET, amis[name], clients, seconds)
           for name, url in servers.items()}  # fmt: skip
    a, m = got["amilab"], got["moto"]
    return {"Clients": clients, "Seconds": seconds, "amilab": a, "moto": m,
            "ReqPerSecRatio": a["ReqPerSec"] / m["ReqPerSec"],
            "P99Ratio": m["P99Ms"] / a["P99Ms"]}  # fmt: skip


def print_mix(mixed: dict[str, Any]) -> None:
    a, m = mixed["amilab"], mixed["moto"]
    print(f"\nmix (CreateTags, DescribeImages, CopyImage, DeregisterImage, CreateSnapshot, "
          f"DeleteSnapshot, Run/TerminateInstances dry-run, Create/DeleteKeyPair): "
          f"{mixed['Clients']} boto3 clients, {mixed['Seconds']:.0f} s each")  # fmt: skip
    print(f"{'server':8} {'requests':>8} {'req/s':>8} {'p99 ms':>8} {'median ms':>9} "
          f"{'5xx':>4}")  # fmt: skip
    for name, r in (("amilab", a), ("moto", m)):
        print(f"{name:8} {r['Requests']:>8} {r['ReqPerSec']:>8.1f} {r['P99Ms']:>8.1f} "
              f"{r['MedianMs']:>9.1f} {r['ServerErrors']:>4}")  # fmt: skip
        for line in r["Unexpected"]:
            print(f"  {name} unexpected: {line[:200]}")
    print("p99 ms per action, amilab/moto:")
    for act, got in a["PerAction"].items():
        peer = m["PerAction"].get(act, {}).get("P99Ms", float("nan"))
        print(f"  {act:20} {got['P99Ms']:>8.0f} {peer:>8.0f}")
    print(f"ratio req/s amilab/moto {mixed['ReqPerSecRatio']:.2f}; "
          f"p99 moto/amilab {mixed['P99Ratio']:.2f}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--mix-seconds", type=float, default=30.0)
    ap.add_argument("--mix-clients", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    procs: list[subprocess.Popen] = []
    try:
        home = work / "home"
        seed_amilab(home, args.images, args.instances)
        accounts = work / "accounts.yaml"
        accounts.write_text(json.dumps({"accounts": [
            {"AccountId": ACCOUNT, "AccessKeyId": KEY, "SecretAccessKey": SECRET}]}))  # fmt: skip
        env = {**os.environ, "AMILAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
        ap_port, moto_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "api", "serve", "--port", str(ap_port),
             "--accounts", str(accounts)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        no_amis = work / "amis.json"
        no_amis.write_text("[]")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(moto_port)],
            env={**os.environ, "MOTO_AMIS_PATH": str(no_amis)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        wait_port(ap_port, procs[0])
        wait_port(moto_port, procs[1])
        servers = {"amilab": f"http://127.0.0.1:{ap_port}", "moto": f"http://127.0.0.1:{moto_port}"}
        seed_moto(servers["moto"], args.images, args.instances)
        # both hold the same records: checked, not assumed
        for name, url in servers.items():
            c = boto3.client("ec2", endpoint_url=url, region_name="us-east-1",
                             aws_access_key_id=KEY, aws_secret_access_key=SECRET)  # fmt: skip
            n_img = len(c.describe_images(Owners=["self"])["Images"])
            n_ins = sum(len(r["Instances"]) for r in c.describe_instances()["Reservations"])
            assert (n_img, n_ins) == (args.images, args.instances), (name, n_img, n_ins)
        rows = []
        for action, form in ACTIONS.items():
            for clients in (1, 32):
                got = {}
                for name, url in servers.items():
                    body, headers = signed(url, form)
                    load(url, body, headers, clients, min(1.0, args.seconds))  # warm up
                    got[name] = load(url, body, headers, clients, args.seconds)
                a, m = got["amilab"], got["moto"]
                rows.append({
                    "Action": action, "Clients": clients, "amilab": a, "moto": m,
                    "ReqPerSecRatio": a["ReqPerSec"] / m["ReqPerSec"],
                    "P99Ratio": m["P99Ms"] / a["P99Ms"],
                })  # fmt: skip
        mixed = run_mix(servers, home, args.mix_clients, args.mix_seconds)
        load_avg = os.getloadavg()
        if args.json:
            print(json.dumps({"Images": args.images, "Instances": args.instances,
                              "LoadAverage": load_avg, "Results": rows, "Mix": mixed},
                             indent=2))  # fmt: skip
        else:
            print(f"{args.images} images, {args.instances} instances; {args.seconds:.0f} s per "
                  f"measurement; load average {load_avg[0]:.2f}")  # fmt: skip
            print(
                f"{'action':18} {'clients':>7} {'amilab req/s':>12} {'moto req/s':>10} "
                f"{'ratio':>6} {'amilab p99 ms':>13} {'moto p99 ms':>11} {'ratio':>6}"
            )
            for r in rows:
                a, m = r["amilab"], r["moto"]
                print(f"{r['Action']:18} {r['Clients']:>7} {a['ReqPerSec']:>12.1f} "
                      f"{m['ReqPerSec']:>10.1f} {r['ReqPerSecRatio']:>6.2f} {a['P99Ms']:>13.1f} "
                      f"{m['P99Ms']:>11.1f} {r['P99Ratio']:>6.2f}")  # fmt: skip
            errs = sum(r["amilab"]["Errors"] + r["moto"]["Errors"] for r in rows)
            print(f"non-200 answers: {errs}")
            print_mix(mixed)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
