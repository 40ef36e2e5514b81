"""Known issues on the dashboard: a cell is known when its run matched one, or when one of
the dashboard's known-issues file matches its evidence now (openQA's auto-review applied
to results recorded before the issue was known)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.matrix import known


@dataclass
class Known:
    issues: list[known.KnownIssue] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None) -> Known:
        return cls(known.load(path) if path else [])

    def of(self, cell: dict[str, Any]) -> str:
        """The known issue a recorded cell shows as, if any."""
        if cell.get("KnownIssue"):
            return str(cell["KnownIssue"])
        if cell.get("Status") == "PASS":
            return ""
        for issue in self.issues:
            pattern = re.compile(issue.pattern)
            if any(pattern.search(e.get("Text", "")) for e in cell.get("Evidence") or []):
                return issue.id
        return ""
