"""Smoke results: the per-instance record and its JSON, JUnit and terminal forms."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from builder.progress import show_table
from harness.smoke.checks import CheckResult


@dataclass
class SmokeReport:
    image_id: str
    image_name: str
    virtualization_type: str
    accelerator: str
    accelerator_reason: str
    instance_id: str = ""
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    kernel_release: str = ""
    qemu_command: list[str] = field(default_factory=list)
    # the user-mode network's own QEMU (harness.launch.machine.split_network); empty: in the guest's
    network_command: list[str] = field(default_factory=list)
    seconds_to_ssh: float | None = None
    qemu_cpu_seconds_to_ssh: float | None = None
    seconds: float = 0.0
    console_log: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    failure: str | None = None  # why the instance never got to its checks
    console_tail: str = ""
    boot_phases: dict[str, float] = field(default_factory=dict)
    boot_phases_cpu: dict[str, float] = field(default_factory=dict)
    # systemd-analyze's time, critical chain to ssh.service and blame (harness.smoke.analysis)
    boot_analysis: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.failure is None and bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "InstanceId": self.instance_id,
            "ImageId": self.image_id,
            "ImageName": self.image_name,
            "KernelId": self.kernel_id,
            "RamdiskId": self.ramdisk_id,
            "KernelRelease": self.kernel_release,
            "VirtualizationType": self.virtualization_type,
            "Accelerator": self.accelerator,
            "AcceleratorReason": self.accelerator_reason,
            "QemuCommand": self.qemu_command,
            "NetworkCommand": self.network_command,
            "SecondsToSsh": self.seconds_to_ssh,
            "QemuCpuSecondsToSsh": self.qemu_cpu_seconds_to_ssh,
            "Seconds": self.seconds,
            "BootPhases": self.boot_phases,
            "BootPhasesQemuCpu": self.boot_phases_cpu,
            "BootAnalysis": self.boot_analysis,
            "Passed": self.passed,
            "Failure": self.failure,
            "ConsoleLog": self.console_log,
            "ConsoleTail": self.console_tail if self.failure else "",
            "Checks": [c.to_json() for c in self.checks],
            "Notes": self.notes,
        }


def json_document(reports: list[SmokeReport]) -> Any:
    """One object for one instance, a list for several (DESIGN.md)."""
    docs = [r.to_json() for r in reports]
    return docs[0] if len(docs) == 1 else docs


def write_junit(reports: list[SmokeReport], path: Path) -> None:
    suites = ET.Element("testsuites", name="amilab smoke")
    for r in reports:
        cases = r.checks or [CheckResult("boot", False, "SSH login", "none", r.failure or "")]
        failures = sum(not c.passed for c in cases)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"{r.image_name} {r.image_id} kernel {r.kernel_id or 'own'}",
            tests=str(len(cases)),
            failures=str(failures),
            errors="0",
            time=f"{r.seconds:.2f}",
        )
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("InstanceId", r.instance_id),
            ("Accelerator", r.accelerator),
            ("SecondsToSsh", str(r.seconds_to_ssh)),
            ("ConsoleLog", r.console_log),
        ):
            ET.SubElement(props, "property", name=name, value=value or "")
        for c in cases:
            case = ET.SubElement(suite, "testcase", classname=r.image_name, name=c.name)
            if not c.passed:
                fail = ET.SubElement(
                    case, "failure", message=c.detail or f"expected {c.expected}, got {c.actual}"
                )
                fail.text = f"expected: {c.expected}\nactual: {c.actual}\n{c.detail}"
                if r.failure:
                    fail.text += f"\n\nconsole tail:\n{r.console_tail}"
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def print_summary(reports: list[SmokeReport], console: Console) -> None:
    table = Table(title="amilab smoke")
    for col in ("image", "instance", "kernel", "release", "accel", "ssh s", "total s", "checks"):
        table.add_column(col, justify="right" if col.endswith(" s") else "left")
    table.add_column("result")
    for r in reports:
        ok = sum(c.passed for c in r.checks)
        table.add_row(
            f"{r.image_name}\n{r.image_id}",
            r.instance_id,
            r.kernel_id or "-",
            r.kernel_release or "-",
            r.accelerator.upper(),
            f"{r.seconds_to_ssh:.1f}" if r.seconds_to_ssh is not None else "-",
            f"{r.seconds:.1f}",
            f"{ok}/{len(r.checks)}",
            "[green]passed[/]" if r.passed else "[red]FAILED[/]",
        )
    show_table(table, console)
    for r in reports:
        if r.failure:
            console.print(f"[red]{r.image_name} {r.instance_id}: {r.failure}[/]")
            if r.console_tail:
                console.print(r.console_tail, markup=False, highlight=False)
            console.print(f"console log: {r.console_log}")
        for c in r.checks:
            if not c.passed and not (r.failure and c.name == "boot"):
                console.print(
                    f"[red]{r.image_name} {c.name}[/]: expected {c.expected!r}, "
                    f"got {c.actual!r}" + (f" — {c.detail}" if c.detail else ""),
                    highlight=False,
                )
