"""Comparing a run with an earlier one (`--baseline OLD.json`, a matrix JSON report).

Cells are matched by key (image, options, kernel as the user named them). A regression is a
cell that passed before and fails now (not a known issue); a fix, one that did not pass and
passes now; new and vanished cells are those only one of the runs has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import config
from harness.matrix.results import FAIL, PASS, CellResult

REGRESSION, FIX, NEW = "regression", "fix", "new"


@dataclass
class Comparison:
    baseline: str
    changes: dict[str, str] = field(default_factory=dict)  # cell key -> regression|fix|new
    before: dict[str, str] = field(default_factory=dict)  # cell key -> the old status
    vanished: list[str] = field(default_factory=list)

    def of(self, key: str) -> str:
        return self.changes.get(key, "")

    @property
    def regressions(self) -> list[str]:
        return [k for k, v in self.changes.items() if v == REGRESSION]

    @property
    def fixes(self) -> list[str]:
        return [k for k, v in self.changes.items() if v == FIX]

    @property
    def new(self) -> list[str]:
        return [k for k, v in self.changes.items() if v == NEW]

    def to_json(self) -> dict[str, Any]:
        return {
            "Baseline": self.baseline,
            "Regressions": self.regressions,
            "Fixes": self.fixes,
            "New": self.new,
            "Vanished": self.vanished,
        }


def load(path: Path) -> dict[str, str]:
    """Cell key -> status of an earlier matrix JSON report."""
    return {c["Cell"]: c["Status"] for c in _cells(path) if not c.get("NotRun")}


def durations(path: Path) -> dict[str, float]:
    """Cell key -> seconds its last attempt took, in an earlier report (for the start order)."""
    out = {}
    for c in _cells(path):
        attempts = c.get("Attempts") or []
        last = attempts[-1].get("Seconds") if attempts and isinstance(attempts[-1], dict) else None
        if not c.get("NotRun") and isinstance(last, (int, float)) and last > 0:
            out[c["Cell"]] = float(last)
    return out


def _cells(path: Path) -> list[dict[str, Any]]:
    cfg = config.load(path, f"--baseline {path}", what="baseline", as_json=True)
    cells = cfg.section("Cells", "not an `amilab matrix --json` report (no Cells)")
    for n, c in enumerate(cells):
        if not (isinstance(c, dict) and "Cell" in c and "Status" in c):
            raise cfg.error(f"Cells[{n + 1}]: expected a cell with its Cell and Status", "Cells", n)
    return cells


def compare(old: dict[str, str], results: list[CellResult], name: str) -> Comparison:
    out = Comparison(name, before=dict(old))
    now = {r.cell.key: r for r in results}
    for key, r in now.items():
        if r.not_run:
            continue
        was = old.get(key)
        if was is None:
            out.changes[key] = NEW
        elif was == PASS and r.status == FAIL and not r.verdict.known_issue:
            out.changes[key] = REGRESSION
        elif was != PASS and r.status == PASS:
            out.changes[key] = FIX
    out.vanished = [k for k in old if k not in now]
    return out
