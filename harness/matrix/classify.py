"""From one smoke run to a verdict: status, class and the evidence that decided it.

The console is read after the fact, whole, so evidence carries line numbers (1-based, of
the console log as the report links it). The order of the rules is the order of trust: what
the console says the guest did wins over what the harness saw from outside (a timeout), and
a QEMU that died by a signal nobody in the guest sent is the host's fault, not the image's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from harness.launch.console import FAILURES, KERNEL_STALL, MILESTONES, STALLS
from harness.matrix.results import ERROR, FAIL, PASS, Evidence, Verdict

# the console watcher's reasons (harness.launch.console.FAILURES) as matrix classes
CLASS_OF_REASON = {
    "ramdisk could not find the root": "root device not found",
    "ramdisk failed": "ramdisk failed",
    "init exec format error": "init exec format error (kernel of another architecture)",
    "unable to mount root": "root filesystem cannot be mounted",
    "root device not found": "root device not found",
    "init failed": "init failed / emergency mode",
    "kernel panic": "kernel panic",
    "the image's key agent got no key": "no key installed",
}
NO_DRIVER = "ramdisk lacks the disk driver"
QEMU_DIED = "QEMU died"
NETWORK_DIED = "QEMU's network process died"
SILENT = "SSH never answered with the console silent"
NO_NETWORK = "network never came up"
TRANSPORT = "SSH transport failure with a healthy console"
OFF = "guest powered off or reset before SSH"
KERNEL_STALLED = "kernel stalled before init (console silent)"
HARNESS = "harness error"
KERNEL_REFUSED = "QEMU refused the kernel"
# QEMU's own words for a kernel file it cannot load (hw/i386/x86.c, hw/core/loader.c): the
# kernel is at fault, not the host, so the cell fails instead of erring and being retried
_REFUSED = re.compile(
    r"invalid kernel header|linux kernel too old|could not load kernel|"
    r"kernel is not a bzImage|Error loading uncompressed kernel"
)
MODULE_TREE = "module tree missing"
MODULE_LOAD = "a module fails to load"
WRONG_KERNEL = "another kernel booted"
METADATA = "metadata wrong"

# the guest got as far as running its services: its network stack is up
_HEALTHY = re.compile(
    r"ec2-fetch-ssh-key|Reached target .*Network|Started .*OpenBSD Secure|"
    r"Started ssh|login:"
)
EXCERPT_LINES = 40
_EXIT = re.compile(r"\(exit status (-?\d+)")  # WaitForSsh's words for a QEMU that is gone


@dataclass
class Observed:
    """What one attempt left behind, for the classifier."""

    report: dict[str, Any]  # the smoke report's JSON (SmokeReport.to_json)
    console: str = ""  # the whole console log, CRs removed
    qemu_exit: int | None = None  # None: still running when the attempt ended, or never started
    error: str = ""  # an exception the attempt raised (the harness's or the host's fault)
    milestones: dict[str, float] = field(default_factory=dict)


def lines_matching(console: str, pattern: re.Pattern[str], limit: int = 5) -> list[Evidence]:
    out = []
    for n, line in enumerate(console.split("\n"), 1):
        if pattern.search(line):
            out.append(Evidence(n, line.strip()))
            if len(out) >= limit:
                break
    return out


def last_lines(console: str, count: int = 3) -> list[Evidence]:
    lines = console.rstrip("\n").split("\n")
    start = max(0, len(lines) - count)
    return [
        Evidence(n, lines[n - 1].strip())
        for n in range(start + 1, len(lines) + 1)
        if lines[n - 1].strip()
    ]


def excerpt(console: str, evidence: list[Evidence], count: int = EXCERPT_LINES) -> str:
    """Numbered console lines around the first piece of evidence (else the end)."""
    lines = console.rstrip("\n").split("\n")
    if not lines:
        return ""
    at = next((e.line for e in evidence if e.line), len(lines))
    start = max(1, min(at - count // 2, len(lines) - count + 1))
    end = min(len(lines), start + count - 1)
    return "\n".join(f"{n:5d}  {lines[n - 1]}" for n in range(start, end + 1))


def _console_failure(console: str) -> Verdict | None:
    for reason, pattern in FAILURES:
        m = pattern.search(console)
        if m is None:
            continue
        klass = CLASS_OF_REASON.get(reason, reason)
        if reason == "ramdisk could not find the root" and "block devices: none" in m.group(0):
            klass = NO_DRIVER  # nothing to look at: the bus's driver is in neither place
        evidence = lines_matching(console, re.compile(re.escape(m.group(0).strip()[:120])), 1)
        evidence += [e for e in lines_matching(console, pattern) if e not in evidence][:3]
        return Verdict(FAIL, klass, evidence)
    for _reason, waiting, progress in STALLS:
        m = waiting.search(console)
        if m and not progress.search(console, m.end()):
            return Verdict(
                FAIL,
                "root device not found",
                lines_matching(console, waiting, 1) + last_lines(console, 1),
            )
    return None


def _check_failure(checks: list[dict[str, Any]], console: str) -> Verdict | None:
    failed = [c for c in checks if not c["Passed"] and c["Name"] != "boot"]
    if not failed:
        return None
    first = failed[0]
    name = first["Name"]
    if any(c["Name"] == "modules-tree" for c in failed):
        first = next(c for c in failed if c["Name"] == "modules-tree")
        klass = MODULE_TREE
    elif name.startswith("modprobe-"):
        klass = MODULE_LOAD
    elif name == "kernel-release":
        klass = WRONG_KERNEL
    elif name.startswith("metadata-"):
        klass = METADATA
    else:
        klass = f"check failed: {name}"
    evidence = [
        Evidence(
            0,
            f"{c['Name']}: expected {c['Expected']!r}, got {c['Actual']!r}"
            + (f" ({c['Detail']})" if c["Detail"] else ""),
        )
        for c in failed
    ]
    evidence += lines_matching(console, MILESTONES[0][1], 1)  # which kernel booted
    return Verdict(FAIL, klass, evidence)


def classify(seen: Observed) -> Verdict:
    r, console = seen.report, seen.console
    if seen.error and _REFUSED.search(seen.error):
        return Verdict(FAIL, KERNEL_REFUSED, [Evidence(0, seen.error)])
    if seen.error:
        return Verdict(ERROR, HARNESS, [Evidence(0, seen.error)] + last_lines(console, 2))
    if r.get("Passed"):
        return Verdict(PASS)
    failure = r.get("Failure") or ""
    if not failure:
        verdict = _check_failure(r.get("Checks", []), console)
        return verdict or Verdict(FAIL, "no checks ran", [])
    if verdict := _console_failure(console):
        return verdict
    if verdict := _check_failure(r.get("Checks", []), console):
        return verdict  # e.g. modules-tree read from the disk when no login came
    if failure.startswith(KERNEL_STALL):  # a hang the verdict cannot pin on the kernel
        return Verdict(ERROR, KERNEL_STALLED, [Evidence(0, failure)] + last_lines(console, 2))
    if failure.startswith("QEMU's network process exited"):
        return Verdict(ERROR, NETWORK_DIED, [Evidence(0, failure)] + last_lines(console, 2))
    status = seen.qemu_exit
    if m := _EXIT.search(failure):
        status = int(m.group(1))
    if status is not None and failure.startswith("QEMU exited"):
        if status < 0:  # a signal from outside the guest: the host's doing
            return Verdict(ERROR, QEMU_DIED, [Evidence(0, failure)] + last_lines(console, 2))
        return Verdict(FAIL, OFF, [Evidence(0, failure)] + last_lines(console, 3))
    if failure.startswith("the checks did not complete"):
        return Verdict(ERROR, TRANSPORT, [Evidence(0, failure)] + last_lines(console, 2))
    if not console.strip():
        return Verdict(ERROR, SILENT, [Evidence(0, failure)])
    if healthy := lines_matching(console, _HEALTHY, 2):
        return Verdict(ERROR, TRANSPORT, [Evidence(0, failure)] + healthy)
    return Verdict(FAIL, NO_NETWORK, [Evidence(0, failure)] + last_lines(console, 3))
