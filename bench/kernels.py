#!/usr/bin/env python3
"""Kernel benchmark (issue 12), in one run:

  aki+ari cold     a kernel's AKI and generated ARI with an empty XDG_CACHE_HOME and
                   AMILAB_HOME: its suite's package index, the .deb(s) from the mirror, unpack,
                   depmod, the ramdisk, registration.
  aki+ari warm     the same right after, same cache, a new AMILAB_HOME: nothing downloaded.
  add-modules      `amilab add-modules debian-pv --kernel AKI --default-kernel` of the default
                   PV image (built first, not timed): a sparse copy of the disk, the kernel's
                   modules tree written with e2fsprogs (debugfs; the root is ext4), the new
                   AMI registered.
  rebuild          `amilab build` of the same recipe with `kernel: <that kernel>`, the way to
                   get the same result without add-modules (the user's own warm caches: the
                   base root tree and the kernel are cached, as they would be).

The ratio is add-modules / rebuild. The 1-minute load average is printed beside each timing:
the machine is shared, and other work skews them.

Usage: .venv/bin/python bench/kernels.py [--kernel NAME] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_KERNEL = "debian-cloud-bookworm-backports"
_REGISTER = (
    "import json, sys, time\n"
    "t0 = time.monotonic()\n"
    "from builder.images.kernel_refs import register_catalogue_kernel\n"
    "aki, ari = register_catalogue_kernel(sys.argv[1])\n"
    "print(json.dumps({'aki': aki.image_id, 'ari': ari.image_id,\n"
    "                  'release': aki.kernel_release, 's': time.monotonic() - t0}))\n"
)


@dataclass
class Timing:
    name: str
    seconds: float
    load: float  # 1-minute load average when it started
    detail: str = ""


def amilab_command() -> list[str]:
    beside = Path(sys.executable).parent / "amilab"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "harness.cli"]


def timed(name: str, argv: list[str], env: dict[str, str]) -> tuple[Timing, str]:
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                            text=True, check=False)  # fmt: skip
    seconds = time.monotonic() - t0
    if result.returncode != 0:
        sys.exit(f"bench: {name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return Timing(name, seconds, load), result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=DEFAULT_KERNEL)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amilab-bench-kernels-"))
    amilab = amilab_command()
    timings: list[Timing] = []
    try:
        cold = {"XDG_CACHE_HOME": str(work / "cache"), "AMILAB_HOME": str(work / "cold")}
        register = [sys.executable, "-c", _REGISTER, args.kernel]
        t, out = timed("aki+ari cold", register, cold)
        got = json.loads(out)
        t.detail = f"{got['aki']} {got['ari']} ({got['release']}, download)"
        timings.append(t)
        warm = {**cold, "AMILAB_HOME": str(work / "warm")}
        t, _ = timed("aki+ari warm", register, warm)
        t.detail = "cached kernel, new registry"
        timings.append(t)

        # the image and the kernel in the user's own caches (a rebuild would find them)
        home = {"AMILAB_HOME": str(work / "home")}
        timed("build", [*amilab, "build", "build.yaml", "--image", "debian-pv"], home)
        _, out = timed("register", register, home)
        aki = json.loads(out)["aki"]
        t, out = timed("add-modules", [*amilab, "add-modules", "debian-pv", "--kernel", aki,
                                       "--default-kernel"], home)  # fmt: skip
        t.detail = out.strip()
        timings.append(t)
        recipes = yaml.safe_load((ROOT / "build.yaml").read_text())["images"]
        base = next(r for r in recipes if r["name"] == "debian-pv")
        recipe = work / "rebuild.yaml"
        recipe.write_text(yaml.safe_dump(
            {"images": [dict(base, name="debian-pv-rebuilt", kernel=args.kernel)]}))  # fmt: skip
        t, out = timed("rebuild", [*amilab, "build", str(recipe), "--json"], home)
        t.detail = next(i["ImageId"] for i in json.loads(out)["Images"]
                        if i["ImageType"] == "machine")  # fmt: skip
        timings.append(t)
    finally:
        if args.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    by = {t.name: t for t in timings}
    ratio = by["add-modules"].seconds / by["rebuild"].seconds
    if args.json:
        print(json.dumps({"kernel": args.kernel, "timings": [asdict(t) for t in timings],
                          "add_modules_over_rebuild": ratio}, indent=2))  # fmt: skip
        return 0
    print(f"kernel {args.kernel}  (cores: {os.cpu_count()})")
    for t in timings:
        print(f"  {t.name:<14} {t.seconds:7.1f} s   load {t.load:4.2f}   {t.detail}")
    print(f"  add-modules / rebuild = {ratio:.2f}")
    warm_over_cold = by["aki+ari warm"].seconds / by["aki+ari cold"].seconds
    print(f"  aki+ari warm / cold   = {warm_over_cold:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
