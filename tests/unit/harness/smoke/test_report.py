"""Smoke reports: DESIGN.md's JSON fields, JUnit XML, the summary table."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console

from harness.smoke.checks import CheckResult
from harness.smoke.report import SmokeReport, json_document, print_summary, write_junit

FIELDS = {"InstanceId", "ImageId", "KernelId", "RamdiskId", "VirtualizationType", "Accelerator",
          "QemuCommand", "SecondsToSsh", "Seconds", "Passed", "ConsoleLog", "Checks"}  # fmt: skip


def _report(**kw: object) -> SmokeReport:
    base: dict = dict(
        image_id="ami-0123456789abcdef0",
        image_name="debian-pv",
        virtualization_type="paravirtual",
        accelerator="tcg",
        accelerator_reason="KVM unusable",
        instance_id="i-0123456789abcdef0",
        kernel_id="aki-0123456789abcdef0",
        kernel_release="6.1.0-56-cloud-amd64",
        qemu_command=["qemu-system-x86_64", "-m", "1024"],
        seconds_to_ssh=11.5,
        seconds=18.2,
        console_log="/x/i.console.log",
        checks=[CheckResult("kernel-release", True, "a", "a")],
    )
    base.update(kw)
    return SmokeReport(**base)


def test_json_fields() -> None:
    doc = json_document([_report()])
    assert isinstance(doc, dict) and set(doc) >= FIELDS
    assert doc["Passed"] is True and doc["RamdiskId"] is None
    assert doc["Checks"] == [
        {"Name": "kernel-release", "Passed": True, "Expected": "a", "Actual": "a", "Detail": ""}
    ]
    assert isinstance(json_document([_report(), _report()]), list)


def test_passed_needs_checks_and_no_failure() -> None:
    assert not _report(checks=[]).passed
    assert not _report(failure="kernel panic").passed
    assert not _report(checks=[CheckResult("x", False, "a", "b")]).passed


def test_junit(tmp_path: Path) -> None:
    reports = [
        _report(
            checks=[CheckResult("ok", True, "a", "a"), CheckResult("bad", False, "a", "b", "why")]
        ),
        _report(checks=[], failure="ramdisk could not find the root", console_tail="tail"),
    ]
    out = tmp_path / "junit.xml"
    write_junit(reports, out)
    root = ET.parse(out).getroot()
    suites = root.findall("testsuite")
    assert [s.get("failures") for s in suites] == ["1", "1"]
    failure = suites[1].find("testcase/failure")
    assert failure is not None and "ramdisk" in (failure.text or "") and "tail" in failure.text


def test_summary_table_mentions_failures() -> None:
    buf = io.StringIO()
    print_summary([_report(failure="kernel panic: Fatal exception", checks=[])],
                  Console(file=buf, width=200))  # fmt: skip
    text = buf.getvalue()
    assert "FAILED" in text and "kernel panic" in text and "debian-pv" in text
