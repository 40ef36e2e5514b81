#!/usr/bin/env python3
"""Build benchmark: the default recipe built, in one run, through the real CLI
(`amilab build FILE --json`):

  native cold             empty XDG_CACHE_HOME and AMILAB_HOME: no cached base root tree, no
                          cached kernel package; mmdebstrap and the kernel .deb from the mirror.
  native warm             right after, same XDG_CACHE_HOME, a new AMILAB_HOME (nothing
                          registered there yet): the cached base and kernel are reused
                          (nothing is downloaded) and the whole image is made again.
  native unchanged        then the cold build's AMILAB_HOME again, recipe and inputs
                          unchanged: the registered AMI is returned ("Cached": true),
                          nothing is built, registered or stored (issue 18: <= 2 s).
  diskimage-builder cold  the same recipe with `engine: diskimage-builder`, its own empty
                          XDG_CACHE_HOME and AMILAB_HOME: no DIB image cache (.deb files,
                          debootstrap tarball), no cached kernel package.

With --arch FILE:IMAGE (repeatable, e.g. architectures.yaml:debian-arm64-hvm) each round also
builds that recipe cold and warm as above (its own empty caches), beside the default recipe's,
and prints their times and their ratios to the native x86_64 builds (no target yet).

"Cold" is amilab's and DIB's caches only: the host's page cache, the mirror (and any proxy in
front of it) and the Python environment are as they are. Targets (issue 2): native cold at most
0.5 x diskimage-builder cold; native warm at most 15 s.

With --rounds N the three builds are repeated N times (each round with new, empty homes and
caches, so the builds of a round see the same machine load) and the ratios use the medians: this
machine is shared, and one sample can be off by a factor of two.

Usage: .venv/bin/python bench/build.py [RECIPE_FILE] [--image NAME] [--rounds N]
           [--arch FILE:IMAGE]... [--json] [--keep]
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.images.registry import Registry  # noqa: E402

COLD_RATIO_TARGET = 0.5
WARM_TARGET_S = 15.0
UNCHANGED_TARGET_S = 2.0


@dataclass
class Run:
    name: str
    meaning: str
    seconds: float = 0.0
    ok: bool = False
    image_id: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    error: str = ""
    round: int = 1
    load: float = 0.0  # 1-minute load average when it started: other work skews timings
    cached: bool | None = None  # the build's "Cached" (an earlier build's AMI returned)
    new_files: int = 0  # files the build added to AMILAB_HOME's artifacts and registry


def amilab_command() -> list[str]:
    beside = Path(sys.executable).parent / "amilab"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "harness.cli"]


def pick_recipe(path: Path, image: str | None) -> dict:
    images = yaml.safe_load(path.read_text())["images"]
    for recipe in images:
        if image is None or recipe.get("name") == image:
            return recipe
    sys.exit(f"bench: {path} has no image named {image!r}")


def write_recipe(directory: Path, recipe: dict, engine: str) -> Path:
    """A one-image copy of the recipe (a file may hold several; we time one build)."""
    path = directory / f"{engine}.yaml"
    path.write_text(yaml.safe_dump({"images": [{**recipe, "engine": engine}]}, sort_keys=False))
    return path


def timed_build(run: Run, recipe: Path, home: Path, cache: Path) -> Run:
    env = {**os.environ, "AMILAB_HOME": str(home), "XDG_CACHE_HOME": str(cache)}
    run.load = round(os.getloadavg()[0], 2)
    before = _stored(home)
    start = time.monotonic()
    result = subprocess.run(
        [*amilab_command(), "build", str(recipe), "--json"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    run.seconds = round(time.monotonic() - start, 1)
    run.ok = result.returncode == 0
    if not run.ok:
        run.error = "\n".join(result.stderr.strip().splitlines()[-15:])
        return run
    image = json.loads(result.stdout)["Images"][0]
    run.image_id, run.cached = image["ImageId"], image.get("Cached")
    run.new_files = len(_stored(home) - before)
    record = Registry(home).get(run.image_id)
    if record is not None and not run.cached:  # a cached AMI's timings are its old build's
        run.stages = dict(record.extra.get("timings", {}))
    return run


def _stored(home: Path) -> set[str]:
    """The artifacts under a home, plus the registry's size as a pseudo-file."""
    found = {str(p) for p in (home / "artifacts").rglob("*") if p.is_file()}
    registry = home / "registry.sqlite"
    if registry.exists():
        found.add(f"registry:{len(Registry(home).list())}")
    return found


def one_round(
    recipe: dict, work: Path, number: int, others: list[dict] | tuple[dict, ...] = ()
) -> list[Run]:
    native = write_recipe(work, recipe, "native")
    dib = write_recipe(work, recipe, "diskimage-builder")
    native_home, native_cache = work / "native-home", work / "native-cache"
    plan = [
        (Run("native cold", "empty caches"), native, native_home, native_cache),
        (Run("native warm", "same caches, new home"), native, work / "warm-home", native_cache),
        (
            Run("native unchanged", "same caches and home, inputs unchanged"),
            native,
            native_home,
            native_cache,
        ),  # fmt: skip
        (Run("diskimage-builder cold", "empty caches"), dib, work / "dib-home", work / "dib-cache"),
    ]
    for other in others:  # another architecture's recipe, cold then warm
        arch, name = other.get("architecture", "x86_64"), other["name"]
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"images": [other]}, sort_keys=False))
        cache = work / f"{name}-cache"
        plan += [
            (Run(f"{arch} cold", f"{name}: empty caches"), path, work / f"{name}-home", cache),
            (Run(f"{arch} warm", f"{name}: same caches, new home"), path,
             work / f"{name}-warm-home", cache),
        ]  # fmt: skip
    runs = []
    for run, path, home, cache in plan:
        run.round = number
        print(f"bench: round {number}: {run.name} ...", file=sys.stderr, flush=True)
        runs.append(timed_build(run, path, home, cache))
        print(f"bench: round {number}: {run.name}: {run.seconds:.1f} s", file=sys.stderr)
        if not run.ok:
            break
    return runs


def medians(runs: list[Run]) -> dict[str, Run]:
    """Per build: the median seconds and median rootfs stage over the successful rounds."""
    out: dict[str, Run] = {}
    for name in dict.fromkeys(r.name for r in runs):
        done = [r for r in runs if r.name == name and r.ok]
        if not done:
            continue
        rootfs = [r.stages["rootfs"] for r in done if "rootfs" in r.stages]
        out[name] = Run(
            name,
            done[0].meaning,
            seconds=round(statistics.median(r.seconds for r in done), 1),
            ok=True,
            stages={"rootfs": round(statistics.median(rootfs), 1)} if rootfs else {},
            cached=all(r.cached for r in done),
            new_files=max(r.new_files for r in done),
        )
    return out


def verdicts(runs: dict[str, Run]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    cold, warm, dib = (
        runs.get(k) for k in ("native cold", "native warm", "diskimage-builder cold")
    )
    if cold and dib and cold.ok and dib.ok:
        ratio = cold.seconds / dib.seconds
        out["native cold / diskimage-builder cold"] = {
            "value": round(ratio, 2),
            "target": f"<= {COLD_RATIO_TARGET}",
            "met": ratio <= COLD_RATIO_TARGET,
        }
        rootfs = (cold.stages.get("rootfs"), dib.stages.get("rootfs"))
        if all(rootfs):
            out["rootfs stage: native cold / diskimage-builder cold"] = {
                "value": round(rootfs[0] / rootfs[1], 2),
                "target": "(information)",
                "met": None,
            }
    for name, run in runs.items():  # other architectures beside the native x86_64 builds
        kind = name.rsplit(" ", 1)
        if len(kind) != 2 or kind[0] in ("native", "diskimage-builder") or not run.ok:
            continue
        peer = runs.get(f"native {kind[1]}")
        if peer and peer.ok:
            out[f"{name} / native {kind[1]} (x86_64)"] = {
                "value": round(run.seconds / peer.seconds, 2),
                "target": "(information)",
                "met": None,
            }
    same = runs.get("native unchanged")
    if same and same.ok:
        out["native unchanged rebuild seconds (Cached, nothing stored)"] = {
            "value": same.seconds,
            "target": f"<= {UNCHANGED_TARGET_S:g}",
            "met": same.seconds <= UNCHANGED_TARGET_S and same.cached is True
            and same.new_files == 0,
        }  # fmt: skip
    if warm and warm.ok:
        out["native warm seconds"] = {
            "value": warm.seconds,
            "target": f"<= {WARM_TARGET_S:g}",
            "met": warm.seconds <= WARM_TARGET_S,
        }
        if cold and cold.ok:
            out["native warm / native cold"] = {
                "value": round(warm.seconds / cold.seconds, 2),
                "target": "(information)",
                "met": None,
            }
    return out


def run_line(run: Run, label: str) -> str:
    if not run.ok:
        return f"{label:<32}{'FAILED':>9}  after {run.seconds:.1f} s\n{run.error}"
    stages = " ".join(f"{k}={v:g}" for k, v in run.stages.items() if v >= 0.05)
    rootfs = run.stages.get("rootfs")
    rootfs_text = f"{rootfs:>9.1f}" if rootfs is not None else f"{'-':>9}"
    load = f"{run.load:>7.2f}" if run.load else f"{'':>7}"
    return f"{label:<32}{run.seconds:>9.1f}{rootfs_text}{load}  {stages}"


def report(recipe: dict, source: Path, runs: list[Run], ratios: dict[str, dict]) -> str:
    name = recipe.get("name")
    rounds = max((r.round for r in runs), default=1)
    lines = [
        f"amilab build benchmark: recipe {name!r} from {source} ({os.cpu_count()} cores)",
        "",
        f"{'build':<32}{'seconds':>9}{'rootfs':>9}{'load':>7}  stages (s)",
    ]
    for run in runs:
        lines.append(run_line(run, f"{run.name} (round {run.round})" if rounds > 1 else run.name))
    if rounds > 1:
        lines.append("")
        lines += [run_line(m, f"{m.name} (median)") for m in medians(runs).values()]
    lines += ["", "ratios and targets" + (" (medians):" if rounds > 1 else ":")]
    for label, v in ratios.items():
        verdict = "" if v["met"] is None else ("  met" if v["met"] else "  MISSED")
        lines.append(f"  {label:<52}{v['value']:>8}  target {v['target']}{verdict}")
    lines += [
        "",
        "cold: a new, empty XDG_CACHE_HOME (amilab's base-tree and kernel caches; for",
        "      diskimage-builder also its image cache of .deb files) and a new AMILAB_HOME;",
        "      the host's page cache and the mirror are not reset.",
        "warm: native only, the same caches right after its cold build, in a new home.",
        "unchanged: the cold build's home and caches again: its AMI, Cached, nothing stored.",
        "load: the 1-minute load average as the build started; other work on a shared",
        "      machine skews single samples (use --rounds N for medians).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe_file", nargs="?", default=str(ROOT / "build.yaml"))
    parser.add_argument("--image", help="recipe name in the file (default: the first)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three builds N times")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    parser.add_argument(
        "--arch", action="append", default=[], metavar="FILE:IMAGE",
        help="also build this recipe (another architecture's) cold and warm",
    )  # fmt: skip
    args = parser.parse_args()
    source = Path(args.recipe_file)
    recipe = pick_recipe(source, args.image)
    others = [pick_recipe(Path(f), i) for f, _, i in (a.partition(":") for a in args.arch)]
    base = os.environ.get("AMILAB_BENCH_DIR")
    runs: list[Run] = []
    for number in range(1, max(args.rounds, 1) + 1):
        work = Path(tempfile.mkdtemp(prefix=f"amilab-bench-{number}-", dir=base))
        try:
            done = one_round(recipe, work, number, others)
        finally:
            if args.keep:
                print(f"bench: kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
        runs += done
        if len(done) < 4 + 2 * len(others) or not all(r.ok for r in done):
            break
    ratios = verdicts(medians(runs))
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in runs], "ratios": ratios}, indent=2))
    else:
        print(report(recipe, source, runs, ratios))
    return 0 if runs and all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
