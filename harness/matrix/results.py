"""A cell's result (KernelCI's model, adapted): status, class, evidence, attempts.

PASS: every check passed. FAIL: the image or the kernel is at fault. ERROR: the harness or
the host is (QEMU killed, host timeout, SSH transport trouble while the console looks
healthy). SKIP: the cell cannot apply (firmware on a paravirtual image), or it never ran
because the run was interrupted (`not_run`). Every FAIL and ERROR has a class and the
evidence that decided it: console lines with their line numbers, or a check's result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.matrix.cells import Cell

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"
STATUSES = (PASS, FAIL, ERROR, SKIP)
NOT_RUN = "not run"  # the class of a cell an interrupted run never finished


@dataclass(frozen=True)
class Evidence:
    line: int  # 1-based line of the console log; 0: not from the console (a check)
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"Line": self.line, "Text": self.text}


@dataclass
class Verdict:
    status: str
    klass: str = ""
    evidence: list[Evidence] = field(default_factory=list)
    known_issue: str = ""  # the known-issues entry that matched, if any


@dataclass
class Attempt:
    verdict: Verdict
    report: dict[str, Any] = field(default_factory=dict)  # the smoke report's JSON
    seconds: float = 0.0
    console_excerpt: str = ""


@dataclass
class CellResult:
    cell: Cell
    attempts: list[Attempt] = field(default_factory=list)
    not_run: bool = False
    started: float = 0.0  # seconds after the run started
    seconds: float = 0.0
    # its out-of-tree modules' static and boot verdicts (harness.matrix.static.ModuleCell)
    modules: list[Any] = field(default_factory=list)

    @property
    def final(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def verdict(self) -> Verdict:
        if self.not_run:
            return Verdict(SKIP, NOT_RUN)
        if self.cell.skip:
            return Verdict(SKIP, self.cell.skip)
        assert self.final is not None
        return self.final.verdict

    @property
    def status(self) -> str:
        return self.verdict.status

    @property
    def flaky(self) -> bool:
        """Passed on a retry after an ERROR: reported as flaky, not failed."""
        return len(self.attempts) > 1 and self.status == PASS

    @property
    def mark(self) -> str:
        return "FLAKY" if self.flaky else self.status

    def to_json(self) -> dict[str, Any]:
        v = self.verdict
        report = dict(self.final.report) if self.final else {}
        return {
            **report,
            "Cell": self.cell.key,
            "Image": self.cell.image,
            "ImageId": report.get("ImageId") or self.cell.image_id,
            "Kernel": self.cell.kernel,
            "KernelRef": self.cell.kernel_ref,
            "Options": dict(self.cell.options),
            "Row": self.cell.row,
            "Status": v.status,
            "Class": v.klass,
            "Evidence": [e.to_json() for e in v.evidence],
            "KnownIssue": v.known_issue,
            "Flaky": self.flaky,
            "NotRun": self.not_run,
            "Seconds": round(self.seconds, 2),
            "StartedAt": round(self.started, 2),
            "ConsoleExcerpt": self.final.console_excerpt if self.final else "",
            # only where the image has out-of-tree modules (results.record reads it so)
            **({"Modules": [m.to_json() for m in self.modules]} if self.modules else {}),
            "Attempts": [
                {
                    "Status": a.verdict.status,
                    "Class": a.verdict.klass,
                    "Evidence": [e.to_json() for e in a.verdict.evidence],
                    "InstanceId": a.report.get("InstanceId", ""),
                    "ConsoleLog": a.report.get("ConsoleLog", ""),
                    "Seconds": round(a.seconds, 2),
                }
                for a in self.attempts
            ],
        }


def cell_from_json(doc: dict[str, Any]) -> dict[str, Any]:
    """What a baseline needs of an old run's cell."""
    return {"Cell": doc["Cell"], "Status": doc["Status"], "Class": doc.get("Class", "")}


def as_dict(cell: Cell) -> dict[str, Any]:
    return asdict(cell)
