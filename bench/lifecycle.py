#!/usr/bin/env python3
"""Lifecycle benchmark: bundle, unbundle, store and restore of one AMI (the default image),
each through the real CLI, beside the shell pipeline doing the same work in the same run:

  bundle    amilab bundle        vs  tar -S | tee >(sha1sum) | gzip | openssl enc -aes-128-cbc
                                     | split -b 10M, then sha1sum of the parts
            (ec2-bundle-image's own pipeline, with gzip's default level instead of its -9)
  unbundle  amilab unbundle      vs  sha1sum parts; cat parts | openssl enc -d | gunzip
                                     | tee >(sha1sum) | tar -xS
  store     amilab store DIR     vs  tar -S | tee >(sha256sum) | gzip | openssl enc > object
  restore   amilab restore DIR   vs  openssl enc -d < object | gunzip | tee >(sha256sum)
                                     | tar -xS
            (amilab's restore also checks the disk's digest and registers a new AMI)

MB/s are of the image's logical size (holes included) and, in brackets, of the bytes of data
it holds. Each figure is the median of --runs runs, amilab and the pipeline alternating so
both see the same page cache. Target (issue 7): amilab no slower than the pipeline, i.e.
every ratio (pipeline seconds / amilab seconds) at least 1.

Usage: .venv/bin/python bench/lifecycle.py [--image AMI] [--home DIR] [--runs N] [--json]
Without --home, the default recipe is built into a temporary AMILAB_HOME first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cli_runner import amilab  # noqa: E402
from builder.images import sparsetar  # noqa: E402
from builder.images.bundle_keys import make_key_pair  # noqa: E402


def sh(script: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True, capture_output=True)


CPU: dict[str, dict[str, list[float]]] = {}


def timed(fn, op: str = "", who: str = "") -> float:  # type: ignore[no-untyped-def]
    """Wall seconds of fn(); the CPU seconds of the processes it ran go to CPU[op][who]
    (on a shared, loaded machine CPU time says what wall time cannot)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(op, {}).setdefault(who, []).append(cpu)
    return wall


def data_bytes(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(n for _, n in sparsetar.data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--image", default="debian-pv", help="AMI ID or name (default: debian-pv)")
    ap.add_argument("--home", help="an AMILAB_HOME holding the image (default: build one)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="amilab-bench-lifecycle-"))
    env = {**os.environ, "AMILAB_EC2_KEYS": str(scratch / "ec2")}
    try:
        if args.home:
            env["AMILAB_HOME"] = args.home
        else:
            env["AMILAB_HOME"] = str(scratch / "home")
            print("building the default image ...", file=sys.stderr)
            amilab("build", str(ROOT / "build.yaml"), "--image", "debian-pv", "--json", env=env)
        image = json.loads(amilab("images", "--json", "--type", "machine", env=env).stdout)
        ami = next(i for i in image["Images"] if args.image in (i["ImageId"], i["Name"]))
        disk = Path(ami.get("Locations", {}).get("raw") or ami["ImageLocation"])
        size, data = disk.stat().st_size, data_bytes(disk)
        make_key_pair(scratch / "cert.pem", scratch / "pk.pem", "bench")
        key, iv = secrets.token_hex(16), secrets.token_hex(16)
        times: dict[str, dict[str, list[float]]] = {
            op: {"amilab": [], "pipeline": []} for op in ("bundle", "unbundle", "store", "restore")
        }

        def fresh(name: str) -> Path:
            d = scratch / name
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            return d

        load0 = f"{os.getloadavg()[0]:.1f}"
        tar = f"tar -S --owner 0 --group 0 -cf - -C {disk.parent} {disk.name}"
        cert, pk = str(scratch / "cert.pem"), str(scratch / "pk.pem")
        enc = f"openssl enc -e -aes-128-cbc -K {key} -iv {iv}"
        dec = f"openssl enc -d -aes-128-cbc -K {key} -iv {iv}"

        def measure(op: str, who: str, fn) -> None:  # type: ignore[no-untyped-def]
            times[op][who].append(timed(fn, op, who))

        def steps_for(run: int) -> list:  # type: ignore[type-arg]
            # one run's directories, bound here so each step's closure sees its own
            b, p, u, pu = fresh("b"), fresh("p"), fresh("u"), fresh("pu")
            s, ps, pr = fresh("s"), fresh("ps"), fresh("pr")
            restored_name = f"bench-restore-{os.getpid()}-{run}-{secrets.token_hex(2)}"
            return [
                ("bundle", "amilab", lambda: amilab(
                    "bundle", ami["ImageId"], "--cert", cert, "--privatekey", pk, "-d", str(b),
                    "--prefix", "img", env=env)),
                ("bundle", "pipeline", lambda: sh(
                    f"{tar} | tee >(sha1sum > {p}/digest) | gzip | {enc} "
                    f"| split -b 10485760 -d - {p}/img.part. && sha1sum {p}/img.part.* >{p}/sums")),
                ("unbundle", "amilab", lambda: amilab(
                    "unbundle", str(b / "img.manifest.xml"), "--privatekey", pk, "-d", str(u),
                    env=env)),
                ("unbundle", "pipeline", lambda: sh(
                    f"sha1sum {p}/img.part.* > /dev/null && cat {p}/img.part.* | {dec} | gunzip "
                    f"| tee >(sha1sum > {pu}/digest) | tar -xS -C {pu}")),
                ("store", "amilab", lambda: amilab(
                    "store", ami["ImageId"], "--bucket", str(s), env=env)),
                ("store", "pipeline", lambda: sh(
                    f"{tar} | tee >(sha256sum > {ps}/digest) | gzip | {enc} > {ps}/object.bin")),
                ("restore", "amilab", lambda: amilab(
                    "restore", "--bucket", str(s), "--object-key", f"{ami['ImageId']}.bin",
                    "--name", restored_name, env=env)),
                ("restore", "pipeline", lambda: sh(
                    f"{dec} < {ps}/object.bin | gunzip | tee >(sha256sum > {pr}/digest) "
                    f"| tar -xS -C {pr}")),
            ]  # fmt: skip

        for run in range(args.runs):
            for op, who, fn in steps_for(run):
                measure(op, who, fn)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        # the restored AMIs were only for timing
        restored = amilab("images", "--json", "--name", "bench-restore-*", env=env).stdout
        for rec in json.loads(restored)["Images"]:
            amilab("deregister", rec["ImageId"], env=env)

        rows = []
        for op, t in times.items():
            a, p = statistics.median(t["amilab"]), statistics.median(t["pipeline"])
            rows.append({
                "Operation": op, "AmilabSeconds": round(a, 3), "PipelineSeconds": round(p, 3),
                "AmilabMBps": round(size / a / 1e6, 1), "PipelineMBps": round(size / p / 1e6, 1),
                "AmilabDataMBps": round(data / a / 1e6, 1),
                "PipelineDataMBps": round(data / p / 1e6, 1),
                "Ratio": round(p / a, 2), "TargetMet": p / a >= 1.0,
                "AmilabCpuSeconds": round(statistics.median(CPU[op]["amilab"]), 2),
                "PipelineCpuSeconds": round(statistics.median(CPU[op]["pipeline"]), 2),
            })  # fmt: skip
        result = {
            "ImageId": ami["ImageId"], "ImageBytes": size, "DataBytes": data, "Runs": args.runs,
            "Results": rows, "LoadAverage": [float(load0), round(os.getloadavg()[0], 1)],
        }  # fmt: skip
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{ami['ImageId']}: {size / 1e6:.0f} MB logical, {data / 1e6:.0f} MB of data; "
                  f"median of {args.runs} runs")  # fmt: skip
            print(f"load average before: {load0}, after: {os.getloadavg()[0]:.1f}")
            print(f"{'op':9} {'amilab':>22} {'tar|gzip|openssl':>22} {'ratio':>6}  target"
                  "   CPU s amilab/pipeline")  # fmt: skip
            for r in rows:
                print(
                    f"{r['Operation']:9} {r['AmilabSeconds']:6.2f} s {r['AmilabMBps']:6.0f} MB/s"
                    f" ({r['AmilabDataMBps']:3.0f}) {r['PipelineSeconds']:6.2f} s "
                    f"{r['PipelineMBps']:5.0f} MB/s ({r['PipelineDataMBps']:3.0f}) "
                    f"{r['Ratio']:5.2f}x  {'met   ' if r['TargetMet'] else 'MISSED'}"
                    f"   {r['AmilabCpuSeconds']:5.1f} / {r['PipelineCpuSeconds']:5.1f}"
                )
        return 0 if all(r["TargetMet"] for r in rows) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
