"""Known issues (openQA's auto-review): console patterns that name a bug already known.

    known_issues:
      - id: debian-1234             # shown beside the cell
        pattern: 'BUG: unable to handle page fault.*xen_'
        class: xen probe crash      # replaces the classifier's class
        verdict: FAIL               # PASS | FAIL | ERROR | SKIP; default: keep the status
        retry: false                # true: retried like an ERROR (a known flake)

An entry applies to a cell that did not pass and whose console has a line matching
`pattern`; that line is the evidence. A known issue stays visible (`KnownIssue`), so it
shows as known, not as a new failure, and does not count as a regression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder import config
from harness.matrix.classify import lines_matching
from harness.matrix.results import ERROR, PASS, STATUSES, Verdict

KEYS = {"id", "pattern", "class", "verdict", "retry"}


@dataclass(frozen=True)
class KnownIssue:
    id: str
    pattern: str
    klass: str
    verdict: str = ""
    retry: bool = False


def load(path: Path) -> list[KnownIssue]:
    cfg = config.load(path, what="known-issues file")
    entries = cfg.section("known_issues", "expected a mapping with a known_issues: list")
    out = []
    for i, e in enumerate(entries, 1):
        at, entry = f"known_issues[{i}]", ("known_issues", i - 1)
        if not isinstance(e, dict):
            raise cfg.error(f"{at}: expected a mapping", *entry)
        if set(e) - KEYS:
            extra = sorted(set(e) - KEYS)[0]
            allowed = ", ".join(sorted(KEYS))
            raise cfg.error(f"{at}: unknown key {extra!r}; allowed: {allowed}", *entry, extra)
        for k in ("id", "pattern", "class"):
            if not isinstance(e.get(k), str) or not e[k]:
                raise cfg.error(f"{at}: {k}: required text", *entry, k)
        try:
            re.compile(e["pattern"])
        except re.error as err:
            msg = f"{at}: pattern: not a regular expression: {err}"
            raise cfg.error(msg, *entry, "pattern") from None
        verdict = str(e.get("verdict", "")).upper()
        if verdict and verdict not in STATUSES:
            msg = f"{at}: verdict: {e['verdict']!r}; allowed: {', '.join(STATUSES)}"
            raise cfg.error(msg, *entry, "verdict")
        if not isinstance(e.get("retry", False), bool):
            raise cfg.error(f"{at}: retry: expected true or false", *entry, "retry")
        out.append(KnownIssue(e["id"], e["pattern"], e["class"], verdict, e.get("retry", False)))
    return out


def apply(issues: list[KnownIssue], verdict: Verdict, console: str) -> Verdict:
    if verdict.status == PASS:
        return verdict
    for issue in issues:
        found = lines_matching(console, re.compile(issue.pattern), 3)
        if found:
            status = ERROR if issue.retry else (issue.verdict or verdict.status)
            return Verdict(status, issue.klass, found, known_issue=issue.id)
    return verdict
