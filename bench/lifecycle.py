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

from builder import sparsetar  # noqa: E402
from builder.bundle import make_key_pair  # noqa: E402


def amilab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "harness.cli", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"amilab {' '.join(args)} failed:\n{result.stderr}")
    return result


def sh(script: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True, capture_output=True)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


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
    env = {**os.environ}
    try:
        if args.home:
            env["AMILAB_HOME"] = args.home
        else:
            env["AMILAB_HOME"] = str(scratch / "home")
            print("building the default image ...", file=sys.stderr)
            amilab("build", str(ROOT / "build.yaml"), "--json", env=env)
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

        tar = f"tar -S --owner 0 --group 0 -cf - -C {disk.parent} {disk.name}"
        for run in range(args.runs):
            # bundle
            b = fresh("b")
            times["bundle"]["amilab"].append(timed(lambda b=b: amilab(
                "bundle", ami["ImageId"], "--cert", str(scratch / "cert.pem"), "--privatekey",
                str(scratch / "pk.pem"), "-d", str(b), "--prefix", "img", env=env)))  # fmt: skip
            p = fresh("p")
            times["bundle"]["pipeline"].append(timed(lambda p=p: sh(
                f"{tar} | tee >(sha1sum > {p}/digest) | gzip "
                f"| openssl enc -e -aes-128-cbc -K {key} -iv {iv} "
                f"| split -b 10485760 -d - {p}/img.part. && sha1sum {p}/img.part.* > {p}/parts"
            )))  # fmt: skip
            # unbundle
            u = fresh("u")
            times["unbundle"]["amilab"].append(timed(lambda u=u, b=b: amilab(
                "unbundle", str(b / "img.manifest.xml"), "--privatekey", str(scratch / "pk.pem"),
                "-d", str(u), env=env)))  # fmt: skip
            pu = fresh("pu")
            times["unbundle"]["pipeline"].append(timed(lambda p=p, pu=pu: sh(
                f"sha1sum {p}/img.part.* > /dev/null && cat {p}/img.part.* "
                f"| openssl enc -d -aes-128-cbc -K {key} -iv {iv} | gunzip "
                f"| tee >(sha1sum > {pu}/digest) | tar -xS -C {pu}"
            )))  # fmt: skip
            # store
            s = fresh("s")
            times["store"]["amilab"].append(timed(lambda s=s: amilab(
                "store", ami["ImageId"], "--bucket", str(s), env=env)))  # fmt: skip
            ps = fresh("ps")
            times["store"]["pipeline"].append(timed(lambda ps=ps: sh(
                f"{tar} | tee >(sha256sum > {ps}/digest) | gzip "
                f"| openssl enc -e -aes-128-cbc -K {key} -iv {iv} > {ps}/object.bin"
            )))  # fmt: skip
            # restore (a new name each time: names are unique)
            times["restore"]["amilab"].append(timed(lambda s=s, run=run: amilab(
                "restore", "--bucket", str(s), "--object-key", f"{ami['ImageId']}.bin",
                "--name", f"bench-restore-{os.getpid()}-{run}-{secrets.token_hex(2)}",
                env=env)))  # fmt: skip
            pr = fresh("pr")
            times["restore"]["pipeline"].append(timed(lambda ps=ps, pr=pr: sh(
                f"openssl enc -d -aes-128-cbc -K {key} -iv {iv} < {ps}/object.bin | gunzip "
                f"| tee >(sha256sum > {pr}/digest) | tar -xS -C {pr}"
            )))  # fmt: skip
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
            })  # fmt: skip
        result = {
            "ImageId": ami["ImageId"], "ImageBytes": size, "DataBytes": data, "Runs": args.runs,
            "Results": rows,
        }  # fmt: skip
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{ami['ImageId']}: {size / 1e6:.0f} MB logical, {data / 1e6:.0f} MB of data; "
                  f"median of {args.runs} runs")  # fmt: skip
            print(f"{'op':9} {'amilab':>22} {'tar|gzip|openssl':>22} {'ratio':>6}  target")
            for r in rows:
                print(
                    f"{r['Operation']:9} {r['AmilabSeconds']:6.2f} s {r['AmilabMBps']:6.0f} MB/s"
                    f" ({r['AmilabDataMBps']:3.0f}) {r['PipelineSeconds']:6.2f} s "
                    f"{r['PipelineMBps']:5.0f} MB/s ({r['PipelineDataMBps']:3.0f}) "
                    f"{r['Ratio']:5.2f}x  {'met' if r['TargetMet'] else 'MISSED'}"
                )
        return 0 if all(r["TargetMet"] for r in rows) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
