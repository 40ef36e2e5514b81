#!/usr/bin/env python3
"""Boot benchmark: the default image smoke-tested 5 times through the real CLI
(`amilab smoke AMI --json`), after one build into a fresh AMILAB_HOME (the package and base
caches are shared, so the build is warm when they are).

Prints the median time to SSH and the median whole smoke (boot, checks, shutdown), the
accelerator used, and where the time goes: each smoke's console milestones split the boot
into firmware (QEMU start to the kernel's first line), kernel (to the ramdisk's /init),
ramdisk (to init's first line), init (to sshd's banner) and login (key exchange and auth).

Peers measured in the same run, interleaved with the default so that the host's drifting
speed hits every configuration alike:
- `--baseline REV` (e.g. the commit before a change): the same recipes built and smoke-tested
  by the code and elements of that git revision (a detached worktree, run with this venv), as
  configurations named `baseline` and `ARCH-baseline`: today's boot settings against the new.
- virtme-ng (unless `--no-virtme`): `vng --run <Debian's generic vmlinuz> --disable-kvm
  --force-9p -- uname -r`, its wall time to the answer, beside amilab's time to SSH.
- `--variant NAME=LAYER.ini[,ARGS]`: a qemu-runner layer and/or extra kernel arguments.
- `--arch FILE:IMAGE[@FIRMWARE]` (repeatable, e.g. architectures.yaml:debian-arm64-hvm or
  build.yaml:debian-hvm@uefi): that recipe too, as a configuration named by its architecture,
  virtualization and firmware (and its baseline with `--baseline`).

Targets (issue 28), under TCG on the 2-core CI machine: the new settings <= 0.5x the
baseline's time to SSH, and amilab >= 2.5x faster than virtme-ng.

Usage: .venv/bin/python bench/boot.py [RECIPE_FILE] [--image NAME] [--runs N]
           [--baseline REV] [--no-virtme] [--variant NAME=LAYER.ini] [--variant NAME=,quiet]
           [--arch FILE:IMAGE[@FIRMWARE]] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
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
BASELINE_RATIO_TARGET = 0.5  # new time to SSH / the baseline's
VIRTME_RATIO_TARGET = 2.5  # virtme-ng's time to `uname -r` / amilab's time to SSH
VIRTME = "virtme-ng"
PHASES = ("firmware", "kernel", "ramdisk", "init", "login")


@dataclass
class Variant:
    name: str
    layer: str | None = None
    append: str | None = None
    ami: str | None = None  # another image (--arch): smoke-tested instead of the default
    tree: Path | None = None  # another revision's checkout (--baseline) runs the smoke
    firmware: str | None = None
    home: Path | None = None  # the AMILAB_HOME its image was built in

    def args(self) -> list[str]:
        out = ["--layer", self.layer] if self.layer else []
        out += ["--firmware", self.firmware] if self.firmware else []
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


def amilab_command(tree: Path | None = None) -> list[str]:
    if tree is not None:  # that checkout's code first on the path, with this venv's packages
        return [sys.executable, "-m", "harness.cli"]
    beside = Path(sys.executable).parent / "amilab"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "harness.cli"]


def run(
    args: list[str], home: Path, timeout: float = 1800, tree: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMILAB_HOME": str(home)}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return subprocess.run(
        [*amilab_command(tree), *args],
        cwd=tree or ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def build(recipe: Path, image: str | None, home: Path) -> str:
    return build_image(recipe, image, home)["ImageId"]


def build_image(recipe: Path, image: str | None, home: Path, tree: Path | None = None) -> dict:
    if tree is not None:  # the revision's own recipe file of that name
        recipe = tree / recipe.resolve().relative_to(ROOT)
    args = ["build", str(recipe), "--json", *(["--image", image] if image else [])]
    result = run(args, home, tree=tree)
    if result.returncode != 0:
        sys.exit(f"bench: build failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)["Images"][0]


def smoke(ami: str, variant: Variant, home: Path) -> Smoke:
    if variant.name == VIRTME:
        return virtme()
    load = round(os.getloadavg()[0], 2)
    # the baseline revision's smoke knows no --boot-analysis (it recorded none)
    full = [] if variant.tree else ["--boot-analysis", "full"]
    args = ["smoke", variant.ami or ami, "--json", *full, *variant.args()]
    result = run(args, home, tree=variant.tree)
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


def generic_kernel() -> str | None:
    """Debian's generic kernel on the host: virtme-ng boots the host's root over 9p, which
    the cloud kernel lacks (AMILAB_BENCH_PEERS=1 scripts/setup.sh installs it)."""
    generic = [k for k in sorted(glob.glob("/boot/vmlinuz-*-amd64")) if "cloud" not in k]
    return generic[-1] if generic else None


def vng_path() -> str | None:
    vng = shutil.which("vng") or str(Path(sys.executable).parent / "vng")
    return vng if Path(vng).exists() else None


def virtme() -> Smoke:
    """One `vng --run` to `uname -r` under TCG; its wall time stands where amilab's time to
    SSH does, its CPU seconds (QEMU and vng's own) where QEMU's."""
    load = round(os.getloadavg()[0], 2)
    vng, kernel = vng_path(), generic_kernel()
    if vng is None or kernel is None:
        return Smoke(VIRTME, False, load=load, error="virtme-ng or the generic kernel missing")
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/libexec/qemu",
                            "/usr/lib/qemu", os.environ.get("PATH", "")])  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    argv = [vng, "--run", kernel, "--disable-kvm", "--force-9p", "--", "uname", "-r"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                       env={**os.environ, "PATH": path}, stdin=subprocess.DEVNULL)  # fmt: skip
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    release = Path(kernel).name.removeprefix("vmlinuz-")
    if r.returncode != 0 or release not in r.stdout:
        return Smoke(VIRTME, False, load=load, error=(r.stderr or r.stdout)[-500:])
    return Smoke(VIRTME, True, round(wall, 2), round(wall, 2), round(cpu, 2), load=load,
                 accelerator="tcg")  # fmt: skip


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
            if name.endswith("baseline") and m["ssh"]:
                new = meds.get(name.removesuffix("-baseline") if name != "baseline" else "default")
                if new and new["ssh"] is not None:
                    label = name.removesuffix("-baseline") if name != "baseline" else "default"
                    ratio = round(new["ssh"] / m["ssh"], 2)
                    verdicts[f"{label} / its baseline, time to SSH"] = {
                        "value": ratio,
                        "target": f"<= {BASELINE_RATIO_TARGET:g}",
                        "met": ratio <= BASELINE_RATIO_TARGET,
                    }
                    if new["cpu"] and m["cpu"]:
                        verdicts[f"{label} / its baseline, QEMU CPU to SSH"] = {
                            "value": round(new["cpu"] / m["cpu"], 2),
                            "target": "(information)",
                            "met": None,
                        }
                continue
            if name == VIRTME and m["ssh"] is not None:
                ratio = round(m["ssh"] / base["ssh"], 2)  # type: ignore[operator]
                verdicts["virtme-ng to uname -r / amilab to SSH"] = {
                    "value": ratio,
                    "target": f">= {VIRTME_RATIO_TARGET:g}",
                    "met": ratio >= VIRTME_RATIO_TARGET,
                }
                continue
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
        "--arch", action="append", default=[], metavar="FILE:IMAGE[@FIRMWARE]",
        help="another recipe (architecture, hvm firmware), smoke-tested beside the default",
    )  # fmt: skip
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also build and smoke with the code and elements of git REV",
    )
    parser.add_argument("--no-virtme", action="store_true", help="leave virtme-ng out")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="amilab-bench-boot-"))
    tree = home / "baseline-tree" if args.baseline else None
    try:
        if tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                            str(tree), args.baseline], check=True)  # fmt: skip
        print("bench: building ...", file=sys.stderr, flush=True)
        recipe = Path(args.recipe_file)
        first = build_image(recipe, args.image, home / "new")
        ami = first["ImageId"]
        variants = [Variant("default", home=home / "new"), *args.variant]
        for v in args.variant:
            v.home = home / "new"
        if tree is not None:
            old = build_image(recipe, args.image, home / "old", tree)
            variants.append(Variant("baseline", ami=old["ImageId"], tree=tree, home=home / "old"))
        for spec in args.arch:
            path, _, image = spec.partition(":")
            image, _, firmware = image.partition("@")
            other = build_image(Path(path), image or None, home / "new")
            # named by architecture, virtualization and firmware: i386 has a paravirtual and
            # an hvm recipe, debian-hvm boots on BIOS and UEFI
            name = f"{other['Architecture']}-{other.get('VirtualizationType', 'hvm')}"
            name += f"-{firmware}" if firmware else ""
            variants.append(Variant(name, ami=other["ImageId"], firmware=firmware or None,
                                    home=home / "new"))  # fmt: skip
            if tree is not None:
                old = build_image(Path(path), image or None, home / "old", tree)
                variants.append(Variant(f"{name}-baseline", ami=old["ImageId"], tree=tree,
                                        firmware=firmware or None, home=home / "old"))  # fmt: skip
        if not args.no_virtme:
            if vng_path() and generic_kernel():
                variants.append(Variant(VIRTME))
            else:
                print(
                    "bench: virtme-ng left out: `pip install -e '.[bench]'` and Debian's "
                    "generic kernel (AMILAB_BENCH_PEERS=1 scripts/setup.sh)",
                    file=sys.stderr,
                )
        print(f"bench: default is {ami} ({first['Architecture']}); "
              + ", ".join(f"{v.name} is {v.ami}" for v in variants if v.ami),
              file=sys.stderr, flush=True)  # fmt: skip
        runs = []
        for i in range(args.runs):
            for v in variants:  # alternate, so that changing load hits every configuration
                t0 = time.monotonic()
                r = smoke(ami, v, v.home or home / "new")
                runs.append(r)
                state = f"ssh {r.seconds_to_ssh} s" if r.ok else f"FAILED {r.error[-200:]}"
                print(f"bench: {v.name} run {i + 1}: {state} ({time.monotonic() - t0:.1f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip
        text, data = report(ami, variants, runs)
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)  # fmt: skip
        if args.keep:
            print(f"bench: kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
