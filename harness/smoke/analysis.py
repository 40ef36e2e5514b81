"""Where a boot's time went, in the guest's own words: `systemd-analyze` read over SSH after
the checks, so that a smoke report (and each matrix cell) carries its critical chain to
sshd and the units' start times beside the console's phases.

The boot may still be running when the harness logs in (sshd starts before the rest of
system initialisation, elements/ssh-first): systemd-analyze refuses until it is finished, so
the script waits for the system to settle, a bounded while. An image without systemd gives
nothing and the report says so.

What it costs: each systemd-analyze is a D-Bus conversation with PID 1, and `blame` asks for
every unit's timestamps, seconds of an emulated CPU. So a smoke records `time` and the
critical chain to ssh.service by default ("chain"), the blame list only when asked ("full",
as bench/boot.py does), and nothing with "none".
"""

from __future__ import annotations

import paramiko

from builder.steps import Step
from harness.launch.ssh import run
from harness.launch.steps import Instance
from harness.smoke.report import SmokeReport

SETTLE_SECONDS = 30  # the guest-side wait for the boot's end
TIMEOUT = SETTLE_SECONDS + 30.0
BLAME_LINES = 25
SECTIONS = ("Time", "CriticalChain", "Blame")
LEVELS = ("none", "chain", "full")  # smoke --boot-analysis

# one marker line before each section; absent systemd-analyze, nothing at all
_HEAD = f"""command -v systemd-analyze >/dev/null 2>&1 || exit 0
timeout {SETTLE_SECONDS} systemctl is-system-running --wait >/dev/null 2>&1
echo '@@Time'; systemd-analyze time 2>&1
echo '@@CriticalChain'; systemd-analyze critical-chain ssh.service --no-pager 2>&1
"""
_BLAME = f"""echo '@@Blame'; systemd-analyze blame --no-pager 2>&1 | head -n {BLAME_LINES}
"""
SCRIPT = _HEAD + _BLAME


def script(level: str) -> str | None:
    """What the guest runs for an analysis level (None: nothing)."""
    return {"none": None, "chain": _HEAD, "full": _HEAD + _BLAME}[level]


def parse(output: str) -> dict[str, str]:
    """The sections of SCRIPT's output, by name; the explanatory header of critical-chain
    (two lines about '@' and '+') is dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@@") and line[2:] in SECTIONS:
            current = sections.setdefault(line[2:], [])
        elif current is not None:
            if line.startswith("The time ") and "printed after" in line:
                continue
            current.append(line.rstrip())
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


class RecordBootAnalysis(Step[Instance]):
    """After the checks: what systemd says about this boot, into the report. A failure here
    never fails the smoke (it is evidence, not a check)."""

    name = "boot analysis"

    def __init__(self, report: SmokeReport, level: str = "chain") -> None:
        self.report = report
        self.script = script(level)

    def run(self, s: Instance) -> None:
        if s.login is None or self.report.failure or self.script is None:
            return
        try:
            result = run(s.ssh, self.script, timeout=TIMEOUT)
        except (TimeoutError, paramiko.SSHException, EOFError, OSError) as e:
            self.report.notes.append(f"no boot analysis: {e}")
            return
        self.report.boot_analysis = parse(result.output)
