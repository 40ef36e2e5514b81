#!/usr/bin/env python3
"""Instance benchmark: the life of one long-lived instance of the default image, through the
real CLI, beside what a one-shot launch of the same image costs in the same run.

  run-instances -> running     the command's return to describe-instances saying running
  run-instances -> SSH         to the first SSH login on port 22 of the instance's address
  stop -> stopped              stop-instances --wait (AMILAB_STOP_TIMEOUT bounds the wait for
                               a guest that ignores the ACPI power button; printed)
  start -> SSH                 start-instances to the first SSH login again
  create-image (stopped)       create-image of the running instance: stop, snapshot, register,
                               start again
  create-image --no-reboot     snapshot of the running instance's volume, register

Peers measured in the same run: `amilab smoke`'s SecondsToSsh for the same AMI (one-shot:
a throwaway overlay, no supervisor, counted from QEMU's start) for run-instances -> SSH,
and `qemu-img convert` of the instance's root volume to raw plus its sha256 (what a
snapshot must do at least) for create-image --no-reboot. Ratios are peer seconds / amilab
seconds (1 or more: no slower).

Usage: .venv/bin/python bench/instances.py [--image AMI] [--home DIR] [--json]
Without --home, the default recipe is built into a temporary AMILAB_HOME first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paramiko  # noqa: E402

from bench import cli_runner  # noqa: E402
from harness.launch.ssh import wait_for_ssh  # noqa: E402


def amilab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI; smoke may also exit 1 (a FAIL verdict: its report still holds the timings)."""
    return cli_runner.amilab(*args, env=env, ok=(0, 1) if args[0] == "smoke" else (0,))


def state(iid: str, env: dict[str, str]) -> str:
    out = json.loads(amilab("describe-instances", iid, "--json", env=env).stdout)
    return str(out["Reservations"][0]["Instances"][0]["State"]["Name"])


def wait_state(iid: str, name: str, env: dict[str, str], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while state(iid, env) != name:
        if time.monotonic() > deadline:
            raise SystemExit(f"{iid} never became {name}")
        time.sleep(0.2)


def ssh(address: str, pem: Path) -> None:
    key = paramiko.Ed25519Key.from_private_key_file(str(pem))
    wait_for_ssh(22, key, 900, lambda: None, host=address).client.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image")
    ap.add_argument("--home", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="amilab-bench-instances-")
    home = args.home or Path(tmp.name) / "home"
    env = {**os.environ, "AMILAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.setdefault("AMILAB_STOP_TIMEOUT", "20")
    image = args.image
    if image is None:
        built = json.loads(amilab("build", "--image", "debian-pv", "--json", env=env).stdout)
        image = next(i["ImageId"] for i in built["Images"] if i["ImageType"] == "machine")
    pem = home / "bench.pem"
    amilab("delete-key-pair", "--key-name", "bench", env=env)
    pem.write_text(amilab("create-key-pair", "--key-name", "bench", env=env).stdout)
    pem.chmod(0o600)
    t: dict[str, float] = {}

    t0 = time.monotonic()
    res = json.loads(
        amilab("run-instances", image, "--key-name", "bench", "--json", env=env).stdout
    )
    inst = res["Instances"][0]
    iid, address = inst["InstanceId"], inst["PublicIpAddress"]
    try:
        wait_state(iid, "running", env)
        t["run-instances -> running"] = time.monotonic() - t0
        ssh(address, pem)
        t["run-instances -> SSH"] = time.monotonic() - t0
        t0 = time.monotonic()
        amilab("stop-instances", iid, "--wait", env=env)
        t["stop -> stopped"] = time.monotonic() - t0
        t0 = time.monotonic()
        amilab("start-instances", iid, env=env)
        ssh(address, pem)
        t["start -> SSH"] = time.monotonic() - t0
        t0 = time.monotonic()
        amilab("create-image", iid, "--name", f"bench-{iid}", env=env)
        t["create-image (stopped)"] = time.monotonic() - t0
        wait_state(iid, "running", env)
        t0 = time.monotonic()
        amilab("create-image", iid, "--name", f"bench-{iid}-nr", "--no-reboot", env=env)
        t["create-image --no-reboot"] = time.monotonic() - t0

        peers: dict[str, float] = {}
        with sqlite3.connect(home / "registry.sqlite") as db:
            (vol,) = db.execute(
                "SELECT json_extract(record, '$.BlockDeviceMappings[0].Ebs.VolumeId') "
                "FROM instances WHERE id = ?", (iid,)
            ).fetchone()  # fmt: skip
            (path,) = db.execute(
                "SELECT json_extract(record, '$.Amilab.Path') FROM volumes WHERE id = ?", (vol,)
            ).fetchone()
        with tempfile.TemporaryDirectory(dir=home) as work:
            raw = Path(work) / "v.raw"
            t0 = time.monotonic()
            convert = ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", path, str(raw)]
            subprocess.run(convert, check=True)
            h = hashlib.sha256()
            with open(raw, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            peers["create-image --no-reboot"] = time.monotonic() - t0
    finally:
        amilab("terminate-instances", iid, "--wait", env=env)
    smoke = amilab("smoke", image, "--json", env=env)
    peers["run-instances -> SSH"] = float(json.loads(smoke.stdout)["SecondsToSsh"])
    rows = []
    for name, seconds in t.items():
        peer = peers.get(name)
        rows.append({"Step": name, "Seconds": round(seconds, 2),
                     "PeerSeconds": round(peer, 2) if peer else None,
                     "Ratio": round(peer / seconds, 2) if peer else None})  # fmt: skip
    if args.json:
        print(json.dumps({"Rows": rows, "StopTimeout": env["AMILAB_STOP_TIMEOUT"]}, indent=2))
    else:
        print(f"instance of {image} (AMILAB_STOP_TIMEOUT={env['AMILAB_STOP_TIMEOUT']})")
        for r in rows:
            peer = f"  peer {r['PeerSeconds']:.2f} s  ratio {r['Ratio']:.2f}" if r["Ratio"] else ""
            print(f"  {r['Step']:<28} {r['Seconds']:7.2f} s{peer}")
        print("  peers: run-instances -> SSH: `amilab smoke`'s SecondsToSsh (one-shot launch,")
        print("         from QEMU's start); create-image --no-reboot: qemu-img convert + sha256")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
