#!/usr/bin/env python3
"""Out-of-tree modules benchmark (issue 27), in one run:

  build            `amilab build` of a recipe with Debian's v4l2loopback-dkms and a Kbuild
                   source tree on bookworm's generic kernel (the image the rest uses).
  static cell      `modules check` of its modules on the x86_64 cloud kernels, run twice; the
                   second (warm: every kernel's index cached) gives each cell's milliseconds,
                   of which the median is printed (target 50 ms).
  static matrix    `matrix --static-only` of the image × every x86_64 catalogue kernel: CLI
                   wall time, first run and warm (target 10 s warm). No QEMU.
  headers          each kernel's linux-headers download and unpack, cold (a cache without
                   header packages; the kernels and package indexes kept) and warm.
  add-modules      per kernel: add-modules with the rebuild (DKMS and Kbuild in a copy of the
                   image's tree), its outcome (a new AMI, or module-build-failed and why).
  rebuild ratio    add-modules with the rebuild against `amilab build` of the same recipe with
                   `kernel: <that kernel>`, where the rebuild succeeds: acpi-call-dkms and
                   the Kbuild tree, bookworm's cloud kernel to bookworm-backports'.

The 1-minute load average is printed beside each timing: the machine is shared.

Usage: .venv/bin/python bench/modules.py [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kernels import Timing  # noqa: E402

CLOUD = ("debian-cloud-bullseye", "debian-cloud", "debian-cloud-trixie", "debian-cloud-sid")
REBUILD = (*CLOUD[:1], *CLOUD[2:], "debian-generic-bookworm-backports")
# v4l2loopback rebuilds for none of REBUILD (other compilers; 0.12.7 does not compile on
# 6.12): the ratio is taken on acpi-call-dkms and the Kbuild tree, from bookworm's cloud
# kernel to bookworm-backports' (gcc-12 both), where the rebuild succeeds
RATIO_FROM, RATIO_KERNEL = "debian-cloud", "debian-cloud-bookworm-backports"
RECIPE = """\
images:
  - name: {dkms}-bench
    elements: [ec2-base]
    kernel: {kernel}
    dkms: [{dkms}]
    extra-modules: [hello]
    disk: {{size: 2G, formats: [raw]}}
    checks: {{metadata: false}}
"""
HELLO = (
    "#include <linux/module.h>\n#include <linux/init.h>\n"
    "static int __init hello_init(void) { return 0; }\n"
    "static void __exit hello_exit(void) { }\n"
    'module_init(hello_init);\nmodule_exit(hello_exit);\nMODULE_LICENSE("GPL");\n'
)
_HEADERS = (
    "import json, sys, time\n"
    "from builder.build.kernel import kernel_by_ref\n"
    "from builder.modules import headers\n"
    "k = kernel_by_ref(sys.argv[1])\n"
    "t0 = time.monotonic()\n"
    "found = headers.resolve(k)\n"
    "headers.unpacked_headers(k)\n"
    "print(json.dumps({'release': k.release, 'debs': len(found.debs),\n"
    "                  's': time.monotonic() - t0}))\n"
)


def run(
    args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[subprocess.CompletedProcess[str], float, float]:
    load, t0 = os.getloadavg()[0], time.monotonic()
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode not in ok:
        sys.exit(f"bench: {' '.join(args[:4])} failed ({result.returncode}):\n"
                 f"{result.stderr[-3000:]}")  # fmt: skip
    return result, time.monotonic() - t0, load


def amilab(*args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)):  # noqa: ANN201
    return run(["-m", "harness.cli", *args], env, ok)


def recipe(tmp: Path, kernel: str, dkms: str = "v4l2loopback-dkms") -> Path:
    (tmp / "hello").mkdir(exist_ok=True)
    (tmp / "hello" / "hello.c").write_text(HELLO)
    (tmp / "hello" / "Kbuild").write_text("obj-m := hello.o\n")
    path = tmp / f"{dkms}-{kernel}.yaml"
    path.write_text(RECIPE.format(kernel=kernel, dkms=dkms))
    return path


def cold_cache(tmp: Path) -> Path:
    """A cache with the warm one's kernels and package indexes, but no .debs or headers."""
    warm = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amilab"
    cold = tmp / "cold-cache"
    (cold / "amilab").mkdir(parents=True)
    for sub in ("kernels", "apt"):
        if (warm / sub).exists():
            (cold / "amilab" / sub).symlink_to(warm / sub)
    return cold


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="amilab-bench-modules-"))
    env = {"AMILAB_HOME": str(tmp / "home")}
    timings: list[Timing] = []
    try:
        result, s, load = amilab("build", str(recipe(tmp, "debian-generic")), "--json", env=env)
        ami = json.loads(result.stdout)["Images"][0]
        timings.append(Timing("build (dkms + Kbuild, own kernel)", s, load, ami["ImageId"]))

        check = ["modules", "check", ami["ImageId"], "--json"]
        check += [a for k in ("debian-generic", *CLOUD) for a in ("--kernel", k)]
        amilab(*check, env=env, ok=(0, 1))  # fetches and indexes the kernels
        result, s, load = amilab(*check, env=env, ok=(0, 1))
        cells = json.loads(result.stdout)["Cells"]
        ms = statistics.median(c["Milliseconds"] for c in cells)
        timings.append(Timing("static check per cell, warm (median)", ms / 1000, load,
                              f"{ms:.2f} ms over {len(cells)} cells; target 50 ms"))  # fmt: skip

        listed = json.loads(amilab("kernels", "--json", env=env)[0].stdout)["Kernels"]
        x86 = [k["Name"] for k in listed if k["Architecture"] == "x86_64"]
        matrix = ["matrix", "--static-only", "--image", ami["ImageId"], "--json", "--no-record"]
        matrix += [a for k in x86 for a in ("--kernel", k)]
        for when in ("first", "warm"):
            result, s, load = amilab(*matrix, env=env, ok=(0, 1))
            n = len(json.loads(result.stdout)["Cells"])
            target = "; target 10 s" if when == "warm" else ""
            timings.append(Timing(f"static-only matrix, {when}", s, load,
                                  f"1 image × {n} x86_64 kernels × 2 modules{target}"))  # fmt: skip

        cold = cold_cache(tmp)
        for name in REBUILD:
            for when, cache in (("cold", cold), ("warm", None)):
                e = {**env, **({"XDG_CACHE_HOME": str(cache)} if cache else {})}
                result, s, load = run(["-c", _HEADERS, name], e)
                got = json.loads(result.stdout)
                timings.append(Timing(f"headers {name}, {when}", got["s"], load,
                                      f"{got['release']}: {got['debs']} packages"))  # fmt: skip

        def add_modules(image: str, name: str, what: str) -> tuple[bool, float]:
            result, s, load = amilab("add-modules", image, "--kernel", name, "--json",
                                     env=env, ok=(0, 1))  # fmt: skip
            if result.returncode == 0:
                detail = "rebuilt: " + json.loads(result.stdout)["Images"][0]["ImageId"]
            else:
                detail = result.stderr.strip().splitlines()[0][:160]
            timings.append(Timing(f"add-modules + rebuild of {what}, {name}", s, load, detail))
            return result.returncode == 0, s

        for name in REBUILD:
            add_modules(ami["ImageId"], name, "v4l2loopback")

        result, _, _ = amilab("build", str(recipe(tmp, RATIO_FROM, "acpi-call-dkms")), "--json",
                              env=env)  # fmt: skip
        source = json.loads(result.stdout)["Images"][0]["ImageId"]
        ok, added = add_modules(source, RATIO_KERNEL, "acpi_call")
        if ok:
            path = recipe(tmp, RATIO_KERNEL, "acpi-call-dkms")
            result, s, load = amilab("build", str(path), "--json", env=env, ok=(0, 1, 2))
            failed = "" if result.returncode == 0 else result.stderr.strip().splitlines()[0]
            timings.append(Timing(f"full build with kernel: {RATIO_KERNEL}", s, load, failed))
            if not failed:
                timings.append(Timing("ratio add-modules / full build", added / s, load,
                                      f"{added:.1f} s / {s:.1f} s"))  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps([asdict(t) for t in timings], indent=2))
        return 0
    for t in timings:
        if t.name.startswith("ratio"):
            value = f"{t.seconds:6.2f}  "
        elif t.seconds < 1:
            value = f"{t.seconds * 1000:6.2f} ms"
        else:
            value = f"{t.seconds:6.2f} s "
        print(f"{t.name:58} {value}  load {t.load:4.1f}  {t.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
