"""The static verdict beside the boot verdict: for each cell whose image carries out-of-tree
modules (dkms, extra-modules), each module's `modules check` class on the cell's kernel
(builder.modules: milliseconds per cell, no boot), and after the boot whether smoke's
`out-of-tree-<module>` check agrees. A disagreement (static `loads` and the boot's modprobe
failed, or the reverse) is a finding of its own, listed in every report.

`matrix --static-only` runs this alone: the images × kernels × modules table without
starting QEMU; a cell is PASS when each of its modules loads statically, else FAIL with the
first module's class and its evidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BadInput
from builder.images.records import ImageRecord
from builder.images.registry import Registry
from builder.modules.check import RECORD_KEY, index_of, modules_for
from builder.modules.elf import ModuleFacts, read_module
from builder.modules.verdict import check
from harness.matrix.results import FAIL, PASS, Attempt, CellResult, Evidence, Verdict

BOOT_CHECK = "out-of-tree-"  # harness.smoke.checks.out_of_tree_module's check names
STATIC_ONLY = "static-only"  # the accelerator a --static-only run reports


@dataclass(frozen=True)
class ModuleCell:
    """One module on one cell's kernel: the static class, and the boot's when it booted."""

    module: str
    built_for: str
    static: str  # loads, needs-rebuild, refused: …
    evidence: tuple[str, ...]
    boot: bool | None = None  # smoke's check passed; None: not booted (or no such check)
    boot_detail: str = ""

    @property
    def agree(self) -> bool | None:
        return None if self.boot is None else (self.static == "loads") == self.boot

    def to_json(self) -> dict[str, Any]:
        boot = {True: "loaded", False: "not loaded", None: ""}[self.boot]
        return {
            "Module": self.module,
            "BuiltFor": self.built_for,
            "Static": self.static,
            "StaticEvidence": list(self.evidence),
            "Boot": boot,
            "BootDetail": self.boot_detail,
            "Agree": self.agree,
        }


class StaticChecker:
    """Verdicts for many cells: each image's .ko files read once, each kernel indexed once."""

    def __init__(self) -> None:
        self.registry = Registry()
        self._images: dict[str, ImageRecord] = {}
        self._facts: dict[str, ModuleFacts] = {}

    def _image(self, image_id: str) -> ImageRecord:
        if image_id not in self._images:
            self._images[image_id] = self.registry.find(image_id, "machine")
        return self._images[image_id]

    def _read(self, record: dict[str, Any]) -> ModuleFacts:
        path = str(record["Artifact"])
        if path not in self._facts:
            self._facts[path] = read_module(Path(path))
        return self._facts[path]

    def kernel_of(self, image: ImageRecord, kernel_ref: str | None) -> ImageRecord | None:
        ref = kernel_ref or image.kernel_id
        if not ref or not ref.startswith("aki-"):
            return None  # an hvm image's own GRUB kernel, or PV-GRUB: no AKI to index
        return self.registry.find(ref, "kernel")

    def verdicts(self, image_id: str, kernel_ref: str | None) -> list[ModuleCell]:
        image = self._image(image_id)
        records = image.extra.get(RECORD_KEY) or []
        if not records:
            return []
        aki = self.kernel_of(image, kernel_ref)
        if aki is None:
            return []
        index = index_of(aki)
        out = []
        for record in modules_for(records, aki.kernel_release or ""):
            v = check(self._read(record), index, aki.architecture)
            out.append(ModuleCell(record["Name"], record["KernelRelease"], v.cls, v.evidence))
        return out


def with_boot(static: list[ModuleCell], report: dict[str, Any]) -> list[ModuleCell]:
    """The boot's side from the smoke report's checks (None where the cell never got to
    them: no SSH, a skipped or errored cell)."""
    checks = {c["Name"]: c for c in report.get("Checks") or []}
    out = []
    for m in static:
        c = checks.get(BOOT_CHECK + m.module)
        if c is None:
            out.append(m)
            continue
        out.append(ModuleCell(m.module, m.built_for, m.static, m.evidence, bool(c["Passed"]),
                              str(c.get("Actual", ""))))  # fmt: skip
    return out


def attach(results: list[CellResult], checker: StaticChecker | None = None) -> None:
    """Each booted (or skipped) cell's module verdicts, static and boot, on `result.modules`."""
    checker = checker or StaticChecker()
    for r in results:
        if r.cell.skip or not r.cell.image_id:
            continue
        try:
            static = checker.verdicts(r.cell.image_id, r.cell.kernel_ref)
        except BadInput:
            continue
        report = r.final.report if r.final else {}
        r.modules = with_boot(static, report)


def disagreements(results: list[CellResult]) -> list[dict[str, Any]]:
    """Every module cell where the static and the boot verdicts differ: findings."""
    return [
        {"Cell": r.cell.key, **m.to_json()} for r in results for m in r.modules if m.agree is False
    ]


def static_only(cells: list[Any], say: Callable[[str], None]) -> list[CellResult]:
    """The static verdicts alone, one result per cell, no QEMU started."""
    checker = StaticChecker()
    out = []
    for cell in cells:
        if cell.skip:
            out.append(CellResult(cell))
            continue
        t0 = time.perf_counter()
        modules = checker.verdicts(cell.image_id, cell.kernel_ref)
        seconds = time.perf_counter() - t0
        bad = [m for m in modules if m.static != "loads"]
        if not modules:
            verdict = Verdict(PASS, "no out-of-tree modules")
        elif bad:
            lines = [Evidence(0, f"{m.module}: {e}") for m in bad for e in m.evidence[:3]]
            verdict = Verdict(FAIL, f"{bad[0].module}: {bad[0].static}", lines)
        else:
            verdict = Verdict(PASS, "")
        result = CellResult(cell, [Attempt(verdict, {"StaticOnly": True}, seconds)],
                            seconds=seconds)  # fmt: skip
        result.modules = modules
        out.append(result)
    say(f"static verdicts of {len(out)} cells, no guest started")
    return out
