"""Cells in the matrix JSON report's shape, for the results store's tests."""

from __future__ import annotations

from typing import Any

from harness.results import record
from harness.results.db import Database


def cell(
    image: str,
    kernel: str,
    status: str = "PASS",
    *,
    release: str = "6.1.0-25-cloud-amd64",
    ssh: float | None = 12.0,
    flaky: bool = False,
    known: str = "",
    klass: str = "",
) -> dict[str, Any]:
    attempts = [{"Status": "ERROR", "Class": "QEMU died", "Seconds": 3.0}] if flaky else []
    attempts.append({"Status": status, "Class": klass, "Seconds": 20.0})
    return {
        "Cell": f"{image} × {kernel}",
        "Row": image,
        "Image": image,
        "ImageId": "ami-0123456789abcdef0",
        "ImageName": image,
        "Kernel": kernel,
        "KernelRef": None if kernel == "own" else kernel,
        "KernelId": "aki-00000000000000001",
        "KernelRelease": release,
        "Options": {},
        "Status": status,
        "Class": klass or ("" if status == "PASS" else "module tree missing"),
        "Evidence": [] if status == "PASS" else [{"Line": 0, "Text": "modules-tree: missing"}],
        "KnownIssue": known,
        "Flaky": flaky,
        "Seconds": 20.0,
        "SecondsToSsh": ssh if status == "PASS" else None,
        "QemuCpuSecondsToSsh": 9.0,
        "BootPhases": {"kernel": 1.0, "init": 4.0},
        "Checks": [
            {
                "Name": "modules-tree",
                "Passed": status == "PASS",
                "Expected": "x",
                "Actual": "y",
                "Detail": "",
            }
        ],  # fmt: skip
        "ConsoleLog": "/nonexistent/console.log",
        "InstanceId": "i-00000000000000001",
        "Attempts": attempts,
    }


def record_run(db: Database, cells: list[dict[str, Any]], started: float, **kw: Any) -> int:
    info = record.RunInfo("matrix", "m.yaml", started, started + 60, "tcg", 2, **kw)
    return record.write_run(db, info, cells)
