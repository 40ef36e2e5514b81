#!/usr/bin/env python3
"""Boot benchmark: the default image smoke-tested 5 times through the real CLI
(`amilab smoke AMI --json`), after one build into a fresh AMILAB_HOME (the package and base
caches are shared, so the build is warm when they are).

Prints the median time to SSH and the median whole smoke (boot, checks, shutdown), the
accelerator used, and where the time goes: each smoke's console milestones split the boot
into firmware (QEMU start to the kernel's first line), kernel (to the ramdisk's /init),
ramdisk (to init's first line), init (to sshd's banner) and login (key exchange and auth).
Peers measured in the same run: each `--variant NAME=LAYER.ini[,ARGS]` (a qemu-runner layer
and/or extra kernel arguments) is smoke-tested alternately with the default configuration,
and its medians are printed as ratios to the default's.

With `--arch FILE:IMAGE` (repeatable, e.g. architectures.yaml:debian-arm64-hvm) that recipe is
built too and smoke-tested alternately with the default image as a configuration named by its
architecture: time to SSH and QEMU CPU seconds per architecture in one run (no target yet).

Targets (issue 3), under TCG on the 2-core CI machine: time to SSH <= 12 s, smoke <= 20 s.

Usage: .venv/bin/python bench/boot.py [RECIPE_FILE] [--image NAME] [--runs N]
           [--variant NAME=LAYER.ini] [--variant NAME=,quiet] [--arch FILE:IMAGE]
           [--json] [--keep]
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

ROOT = Path(__file__).resolve().parent.parent
SSH_TARGET_S = 12.0
SMOKE_TARGET_S = 20.0
PHASES = ("firmware", "kernel", "ramdisk", "init", "login")


@dataclass
class Variant:
    name: str
    layer: str | None = None
    append: str | None = None
    ami: str | None = None  # another image (--arch): smoke-tested instead of the default

    def args(self) -> list[str]:
        out = ["--layer", self.layer] if self.layer else []
        return out + (["--append", self.append] if self.append else [])


@dataclass
class Smoke:
    variant: str
    ok: bool
    seconds_to_ssh: float | None = None
    seconds: float = 0.0
    cpu_to_ssh: float | None = None  # QEMU's CPU seconds until SSH: robust to other load
    phases: dict[str, float] = field(default_factory=dict)
    cpu_phases: dict[str, float] = field(default_factory=dict)  # QEMU CPU seconds per phase
    accelerator: str = ""
    reason: str = ""
    load: float = 0.0  # 1-minute load average as it started: other work skews timings
    error: str = ""


def amilab_command() -> list[str]:
    beside = Path(sys.executable).parent / "amilab"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "harness.cli"]


def run(args: list[str], home: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*amilab_command(), *args],
        cwd=ROOT,
        env={**os.environ, "AMILAB_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build(recipe: Path, image: str | None, home: Path) -> str:
    return build_image(recipe, image, home)["ImageId"]


def build_image(recipe: Path, image: str | None, home: Path) -> dict:
    result = run(["build", str(recipe), "--json", *(["--image", image] if image else [])], home)
    if result.returncode != 0:
        sys.exit(f"bench: build failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)["Images"][0]


def smoke(ami: str, variant: Variant, home: Path) -> Smoke:
    load = round(os.getloadavg()[0], 2)
    result = run(["smoke", variant.ami or ami, "--json", *variant.args()], home)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        return Smoke(variant.name, False, load=load, error=result.stderr[-2000:])
    return Smoke(
        variant.name,
        bool(report["Passed"]),
        report["SecondsToSsh"],
        report["Seconds"],
        report.get("QemuCpuSecondsToSsh"),
        report.get("BootPhases", {}),
        report.get("BootPhasesQemuCpu", {}),
        report["Accelerator"],
        report.get("AcceleratorReason", ""),
        load,
        report.get("Failure") or "",
    )


def medians(runs: list[Smoke]) -> dict[str, float | None]:
    ok = [r for r in runs if r.ok and r.seconds_to_ssh is not None]
    if not ok:
        return {"ssh": None, "smoke": None}
    out: dict[str, float | None] = {
        "ssh": round(statistics.median(r.seconds_to_ssh for r in ok), 2),  # type: ignore[misc]
        "smoke": round(statistics.median(r.seconds for r in ok), 2),
    }
    cpu = [r.cpu_to_ssh for r in ok if r.cpu_to_ssh is not None]
    out["cpu"] = round(statistics.median(cpu), 2) if cpu else None
    for phase in PHASES:
        values = [r.phases[phase] for r in ok if phase in r.phases]
        out[phase] = round(statistics.median(values), 2) if values else None
        cpu_values = [r.cpu_phases[phase] for r in ok if phase in r.cpu_phases]
        out[f"cpu {phase}"] = round(statistics.median(cpu_values), 2) if cpu_values else None
    return out


def report(ami: str, variants: list[Variant], runs: list[Smoke]) -> tuple[str, dict]:
    by_name = {v.name: [r for r in runs if r.variant == v.name] for v in variants}
    meds = {name: medians(rs) for name, rs in by_name.items()}
    base = meds["default"]
    accel = next((r for r in runs if r.accelerator), None)
    lines = [
        f"amilab boot benchmark: {ami}, {len(by_name['default'])} smokes per configuration, "
        f"{os.cpu_count()} cores",
        f"accelerator: {accel.accelerator.upper() + ' (' + accel.reason + ')' if accel else '?'}",
        "",
        f"{'configuration':<16}{'run':>4}{'ssh s':>8}{'smoke s':>9}{'cpu s':>7}{'load':>7}  "
        + " ".join(f"{p:>8}" for p in PHASES),
    ]
    for name, rs in by_name.items():
        for i, r in enumerate(rs, 1):
            if not r.ok:
                lines.append(f"{name:<16}{i:>4}  FAILED {r.error.strip().splitlines()[-1:]}")
                continue
            phases = " ".join(f"{r.phases.get(p, 0):>8.2f}" for p in PHASES)
            cpu = f"{r.cpu_to_ssh:>7.1f}" if r.cpu_to_ssh is not None else f"{'-':>7}"
            lines.append(
                f"{name:<16}{i:>4}{r.seconds_to_ssh:>8.2f}{r.seconds:>9.2f}{cpu}{r.load:>7.2f}  "
                + phases
            )
    lines += ["", "medians:"]
    for name, m in meds.items():
        if m["ssh"] is None:
            lines.append(f"  {name:<14} no successful run")
            continue
        phases = " ".join(f"{p}={m[p]}" for p in PHASES if m.get(p) is not None)
        cpu_phases = " ".join(
            f"{p}={m[f'cpu {p}']}" for p in PHASES if m.get(f"cpu {p}") is not None
        )
        lines.append(
            f"  {name:<14} ssh {m['ssh']:.2f} s  smoke {m['smoke']:.2f} s  "
            f"QEMU CPU to SSH {m['cpu']} s\n  {'':<14} wall s: {phases}\n"
            f"  {'':<14} QEMU CPU s: {cpu_phases} (init includes login)"
        )
    verdicts: dict[str, dict] = {}
    if base["ssh"] is not None:
        verdicts["time to SSH (s)"] = {
            "value": base["ssh"],
            "target": f"<= {SSH_TARGET_S:g}",
            "met": base["ssh"] <= SSH_TARGET_S,
        }
        verdicts["whole smoke (s)"] = {
            "value": base["smoke"],
            "target": f"<= {SMOKE_TARGET_S:g}",
            "met": base["smoke"] <= SMOKE_TARGET_S,  # type: ignore[operator]
        }
        for name, m in meds.items():
            if name != "default" and m["ssh"] is not None:
                verdicts[f"{name} / default, time to SSH"] = {
                    "value": round(m["ssh"] / base["ssh"], 2),  # type: ignore[operator]
                    "target": "(information)",
                    "met": None,
                }
                if m["cpu"] and base["cpu"]:
                    verdicts[f"{name} / default, QEMU CPU to SSH"] = {
                        "value": round(m["cpu"] / base["cpu"], 2),
                        "target": "(information)",
                        "met": None,
                    }
    lines += ["", "targets and ratios:"]
    for label, v in verdicts.items():
        mark = "" if v["met"] is None else ("  met" if v["met"] else "  MISSED")
        lines.append(f"  {label:<40}{v['value']:>8}  target {v['target']}{mark}")
    lines += [
        "",
        "phases come from the host times at which console lines first appear (polled every",
        "0.2 s); a milestone the console does not show (e.g. with `quiet`) folds its phase",
        "into the next one that shows.",
        "load: the 1-minute load average as each smoke started; TCG slows down with it.",
        "cpu: QEMU's CPU seconds (all threads) until SSH, which other load hardly changes.",
    ]
    data = {
        "ImageId": ami,
        "Runs": [asdict(r) for r in runs],
        "Medians": meds,
        "Verdicts": verdicts,
    }
    return "\n".join(lines), data


def parse_variant(text: str) -> Variant:
    name, _, spec = text.partition("=")
    layer, _, append = spec.partition(",")
    if not name or not (layer or append):
        raise argparse.ArgumentTypeError("expected NAME=LAYER.ini[,KERNEL ARGS] or NAME=,ARGS")
    return Variant(name, str(Path(layer).resolve()) if layer else None, append or None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe_file", nargs="?", default=str(ROOT / "build.yaml"))
    parser.add_argument("--image", help="recipe name in the file (default: the first)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--arch", action="append", default=[], metavar="FILE:IMAGE",
        help="another architecture's recipe, smoke-tested beside the default",
    )  # fmt: skip
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="amilab-bench-boot-"))
    try:
        print("bench: building ...", file=sys.stderr, flush=True)
        first = build_image(Path(args.recipe_file), args.image, home)
        ami = first["ImageId"]
        variants = [Variant("default"), *args.variant]
        for spec in args.arch:
            path, _, image = spec.partition(":")
            other = build_image(Path(path), image or None, home)
            # named by architecture and virtualization: i386 has a paravirtual and an hvm recipe
            name = f"{other['Architecture']}-{other.get('VirtualizationType', 'hvm')}"
            variants.append(Variant(name, ami=other["ImageId"]))
        print(f"bench: default is {ami} ({first['Architecture']}); "
              + ", ".join(f"{v.name} is {v.ami}" for v in variants if v.ami),
              file=sys.stderr, flush=True)  # fmt: skip
        runs = []
        for i in range(args.runs):
            for v in variants:  # alternate, so that changing load hits every configuration
                t0 = time.monotonic()
                r = smoke(ami, v, home)
                runs.append(r)
                state = f"ssh {r.seconds_to_ssh} s" if r.ok else f"FAILED {r.error[-200:]}"
                print(f"bench: {v.name} run {i + 1}: {state} ({time.monotonic() - t0:.1f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip
        text, data = report(ami, variants, runs)
    finally:
        if args.keep:
            print(f"bench: kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
