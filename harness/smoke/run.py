"""`amilab smoke`: build if given a recipe file, boot, check, shut down, report.

Several images (a recipe file with several recipes) or several kernels (`--kernel` given
more than once) run one after another; each instance gets its own pipeline, so one failing
boot neither stops the others nor leaves anything behind.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from rich.console import Console

from builder.errors import BadInput
from builder.images.registry import ImageRecord, Registry
from builder.signals import sigterm_as_interrupt
from builder.steps import Step, run_steps
from harness.launch import accel
from harness.launch.request import LaunchRequest, progress_printer
from harness.launch.ssh import BootFailed, SshTimeout, run
from harness.launch.steps import LAUNCH_STEPS, Instance, WaitForSsh
from harness.smoke import checks
from harness.smoke.analysis import RecordBootAnalysis
from harness.smoke.diagnose import modules_tree_from_outside
from harness.smoke.report import SmokeReport, json_document, print_summary, write_junit

CHECKS_TIMEOUT = 120.0


@dataclass(kw_only=True)
class SmokeRequest(LaunchRequest):
    """The launch settings (one instance per kernel and image) and what to test and report."""

    target: str | None = None  # recipe file, AMI ID or image name; None: build.yaml
    image: str | None = None  # recipe name within the file
    json: bool = False
    junit: Path | None = None
    boot_analysis: str = "chain"  # harness.smoke.analysis.LEVELS


class RunChecks(Step[Instance]):
    name = "checks"

    def __init__(self, report: SmokeReport) -> None:
        self.report = report

    def run(self, s: Instance) -> None:
        recipe = s.plan.image.extra.get("recipe") or {}
        image = s.plan.image
        todo = checks.builtin_checks(
            s.plan.expected_release, s.plan.kernel_id, s.plan.ramdisk_id,
            recipe.get("checks") or {}, image.extra.get("out_of_tree_modules") or [],
        )  # fmt: skip
        token = checks.new_token()
        t0 = time.monotonic()
        try:
            result = run(s.ssh, checks.script(todo, token), timeout=CHECKS_TIMEOUT)
        except (TimeoutError, paramiko.SSHException, EOFError, OSError) as e:
            # a hung check or a guest that dropped the session: the report says which
            self.report.failure = f"the checks did not complete: {e}"
            self.report.console_tail = s.watcher.tail() if s.watcher else ""
            return
        self.report.checks = checks.parse(todo, result.output, token)
        s.say(f"{len(todo)} checks in {time.monotonic() - t0:.1f} s")


def _is_recipe_file(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


def resolve_images(req: SmokeRequest, say: Any) -> list[ImageRecord]:
    target = req.target or "build.yaml"
    if _is_recipe_file(target):
        from builder.build.pipeline import build_file  # only a recipe file needs the builder

        say(f"building {target}" + (f" --image {req.image}" if req.image else ""))
        return build_file(Path(target), image=req.image, quiet=req.json)
    if req.image:
        raise BadInput("--image selects a recipe in a recipe file; give the file, or the AMI alone")
    return [Registry().find(target, "machine")]


def smoke_instance(
    image: ImageRecord,
    kernel: str | None,
    req: SmokeRequest,
    chosen: accel.Accelerator,
    say: Any,
    started: Callable[[Instance], None] | None = None,
) -> SmokeReport:
    """One instance's smoke test. `started(instance)` is called before its steps run, so a
    caller running several at once (the matrix) can stop this one's QEMU from outside."""
    plan = req.plan(image, kernel)
    for note in plan.notes:
        say(f"note: {note}")
    report = SmokeReport(
        image_id=image.image_id,
        image_name=image.name,
        virtualization_type=plan.virtualization,
        accelerator=chosen.name,
        accelerator_reason=chosen.reason,
        kernel_id=plan.kernel_id,
        ramdisk_id=plan.ramdisk_id,
        kernel_release=plan.expected_release,
        notes=list(plan.notes),
    )
    inst = Instance(plan, req.options(chosen, say))
    steps: list[Step[Instance]] = [cls() for cls in LAUNCH_STEPS]
    steps += [WaitForSsh(), RunChecks(report), RecordBootAnalysis(report, req.boot_analysis)]
    if started is not None:
        started(inst)
    try:
        run_steps(steps, inst)
    except BootFailed as e:
        report.failure, report.console_tail = e.reason, e.tail
    except SshTimeout as e:
        report.failure = str(e)
        report.console_tail = inst.watcher.tail() if inst.watcher else ""
    finally:
        if report.failure and not report.checks:
            # the boot itself is the failed check, so that check lists show why
            report.checks = [checks.CheckResult("boot", False, "SSH login", "none", report.failure)]
            if inst.watcher is not None:
                outside = modules_tree_from_outside(
                    inst.watcher.text, plan.disk, image.launch.fs_offset
                )
                if outside is not None and not outside.passed:
                    report.checks.append(outside)
        report.instance_id = inst.instance_id
        report.qemu_command = inst.argv
        report.network_command = inst.net_argv
        report.seconds_to_ssh = inst.seconds_to_ssh
        report.qemu_cpu_seconds_to_ssh = inst.cpu_seconds_to_ssh
        report.boot_phases = inst.phases
        report.boot_phases_cpu = inst.cpu_phases
        report.seconds = round(time.monotonic() - inst.started_at, 2)
        report.console_log = str(inst.dir.console_log) if inst.dir else ""
    return report


def smoke(req: SmokeRequest) -> tuple[list[SmokeReport], int]:
    """Run the smoke test; returns the reports and the exit code (0 passed, 1 a check failed)."""
    say = progress_printer()
    with sigterm_as_interrupt():
        chosen = accel.choose(req.accel)
        say(f"accelerator: {chosen.describe()}")
        images = resolve_images(req, say)
        reports = []
        for image in images:
            for kernel in req.kernels or [None]:
                say(
                    f"smoke {image.name} {image.image_id}" + (f" kernel {kernel}" if kernel else "")
                )
                reports.append(smoke_instance(image, kernel, req, chosen, say))
    if req.junit:
        write_junit(reports, req.junit)
    if req.json:
        json.dump(json_document(reports), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(reports, Console())
    return reports, 0 if all(r.passed for r in reports) else 1
