"""The matrix's reports: the grid (images down, kernels across), the terminal table, the
JSON document and JUnit XML. The HTML page is `html.py`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from builder.progress import show_table
from harness.matrix.baseline import REGRESSION, Comparison
from harness.matrix.results import ERROR, FAIL, PASS, SKIP, CellResult
from harness.matrix.static import disagreements

STYLE = {PASS: "green", FAIL: "red", ERROR: "magenta", SKIP: "dim", "FLAKY": "yellow"}
SYMBOL = {PASS: "✓", FAIL: "✗", ERROR: "!", SKIP: "–", "FLAKY": "~"}


@dataclass
class Run:
    """One matrix run, as every report sees it."""

    results: list[CellResult]
    accelerator: str
    jobs: int
    seconds: float
    interrupted: bool = False
    comparison: Comparison | None = None
    started: float = 0.0  # time.time() at the start; 0: unknown
    run_id: int | None = None  # its ID in the results database, once recorded

    def grid(self) -> tuple[list[str], list[str], dict[tuple[str, str], CellResult]]:
        rows = list(dict.fromkeys(r.cell.row for r in self.results))
        cols = list(dict.fromkeys(r.cell.kernel for r in self.results))
        return rows, cols, {(r.cell.row, r.cell.kernel): r for r in self.results}

    def change(self, r: CellResult) -> str:
        return self.comparison.of(r.cell.key) if self.comparison else ""

    def summary(self) -> dict[str, int]:
        out = {s: 0 for s in (PASS, FAIL, ERROR, SKIP)}
        for r in self.results:
            out[r.status] += 1
        out["Flaky"] = sum(r.flaky for r in self.results)
        out["NotRun"] = sum(r.not_run for r in self.results)
        out["Known"] = sum(bool(r.verdict.known_issue) for r in self.results)
        out["Disagreements"] = len(disagreements(self.results))
        return out

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Cells": [{**r.to_json(), "Change": self.change(r)} for r in self.results],
            "Summary": self.summary(),
            "Accelerator": self.accelerator,
            "Jobs": self.jobs,
            "Seconds": round(self.seconds, 2),
            "Interrupted": self.interrupted,
            # static module verdicts the boot contradicted: findings of their own
            "Disagreements": disagreements(self.results),
        }
        if self.started:
            doc["Started"] = _iso(self.started)
            doc["Ended"] = _iso(self.started + self.seconds)
        if self.run_id is not None:
            doc["RunId"] = self.run_id
        if self.comparison:
            doc["Comparison"] = self.comparison.to_json()
        return doc


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def mark(r: CellResult, change: str = "") -> str:
    text = f"[{STYLE[r.mark]}]{SYMBOL[r.mark]} {r.mark}[/]"
    if r.verdict.known_issue:
        text += f" [dim](known {r.verdict.known_issue})[/]"
    elif r.status in (FAIL, ERROR):
        text += f"\n[dim]{r.verdict.klass}[/]"
    if change:
        text += f"\n[bold {'red' if change == REGRESSION else 'cyan'}]{change}[/]"
    for m in r.modules:  # the module column: static verdict / boot verdict
        boot = {True: " / loaded", False: " / not loaded", None: ""}[m.boot]
        flag = "[bold red] ≠[/]" if m.agree is False else ""
        text += f"\n[dim]{m.module}: {m.static}{boot}[/]{flag}"
    return text


def disagreement_lines(run: Run) -> list[str]:
    return [
        f"static vs boot: {d['Cell']}: {d['Module']} static {d['Static']!r}, boot {d['Boot']}"
        + (f" ({d['BootDetail']})" if d["BootDetail"] else "")
        for d in disagreements(run.results)
    ]


def print_table(run: Run, console: Console) -> None:
    rows, cols, cells = run.grid()
    title = f"amilab matrix ({run.accelerator.upper()}, {run.jobs} at once, {run.seconds:.0f} s)"
    table = Table(title=title, show_lines=True)
    table.add_column("image")
    for c in cols:
        table.add_column(c)
    for row in rows:
        table.add_row(
            row,
            *[
                mark(cells[row, c], run.change(cells[row, c])) if (row, c) in cells else ""
                for c in cols
            ],
        )
    show_table(table, console)
    for r in run.results:
        v = r.verdict
        if r.status not in (FAIL, ERROR) and not r.flaky:
            continue
        tries = f" after {len(r.attempts)} attempts" if len(r.attempts) > 1 else ""
        console.print(
            f"[{STYLE[r.mark]}]{r.cell.key}: {r.mark} {v.klass}{tries}[/]", highlight=False
        )
        for e in r.attempts[0].verdict.evidence if r.flaky else v.evidence:
            where = f"console:{e.line}" if e.line else "check"
            console.print(f"    {where}: {e.text}", markup=False, highlight=False)
        if r.final and r.final.report.get("ConsoleLog"):
            console.print(f"    console log: {r.final.report['ConsoleLog']}", highlight=False)
    for text in disagreement_lines(run):
        console.print(f"[bold red]{text}[/]", highlight=False)
    s = run.summary()
    line = ", ".join(f"{s[k]} {k}" for k in (PASS, FAIL, ERROR, SKIP))
    line += f"; {s['Flaky']} flaky" if s["Flaky"] else ""
    line += f"; {s['Disagreements']} static/boot disagreements" if s["Disagreements"] else ""
    line += f"; {s['NotRun']} not run (interrupted)" if s["NotRun"] else ""
    console.print(line, highlight=False)
    if run.comparison:
        c = run.comparison
        console.print(
            f"against {c.baseline}: {len(c.regressions)} regressions, {len(c.fixes)} fixes, "
            f"{len(c.new)} new, {len(c.vanished)} vanished",
            highlight=False,
        )
        for key in c.regressions:
            console.print(f"[bold red]regression[/]: {key}", highlight=False)


def write_junit(run: Run, path: Path, history: dict[str, str] | None = None) -> None:
    """One test suite per cell: a `cell` case with its verdict, then one case per check.
    `history`: cell key -> the results database's verdict on it (e.g. flaky, with its rates),
    carried as the suite's `amilab.history` property and in the cell's failure message."""
    suites = ET.Element("testsuites", name="amilab matrix")
    history = history or {}
    for r in run.results:
        v = r.verdict
        checks = r.final.report.get("Checks", []) if r.final else []
        said = history.get(r.cell.key, "")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=r.cell.key,
            tests=str(1 + len(checks)),
            failures=str(int(r.status == FAIL)),
            errors=str(int(r.status == ERROR)),
            skipped=str(int(r.status == SKIP)),
            time=f"{r.seconds:.2f}",
        )
        if said:
            props = ET.SubElement(suite, "properties")
            ET.SubElement(props, "property", name="amilab.history", value=said)
        case = ET.SubElement(suite, "testcase", classname=r.cell.row, name=f"{r.cell.kernel}")
        text = "\n".join(
            f"{'console:' + str(e.line) if e.line else 'check'}: {e.text}" for e in v.evidence
        )
        message = f"{v.klass} ({said})" if said else v.klass
        if r.status == FAIL:
            ET.SubElement(case, "failure", message=message).text = text
        elif r.status == ERROR:
            ET.SubElement(case, "error", message=message).text = text
        elif r.status == SKIP:
            ET.SubElement(case, "skipped", message=v.klass)
        for m in r.modules:  # one case per module: its static verdict, and the boot's
            mc = ET.SubElement(suite, "testcase", classname=r.cell.key, name=f"module {m.module}")
            ET.SubElement(ET.SubElement(mc, "properties"), "property", name="amilab.static",
                          value=m.static)  # fmt: skip
            if m.agree is False:
                ET.SubElement(mc, "failure", message="static and boot verdicts disagree").text = (
                    f"static: {m.static}\n" + "\n".join(m.evidence) + f"\nboot: {m.boot_detail}"
                )
        for c in checks:
            cc = ET.SubElement(suite, "testcase", classname=r.cell.key, name=c["Name"])
            if not c["Passed"]:
                msg = c["Detail"] or f"expected {c['Expected']}, got {c['Actual']}"
                ET.SubElement(
                    cc, "failure", message=msg
                ).text = f"expected: {c['Expected']}\nactual: {c['Actual']}\n{c['Detail']}"
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="utf-8", xml_declaration=True)
