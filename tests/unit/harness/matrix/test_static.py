"""The module column: each cell's static verdicts beside the boot's smoke check, agreement
decided per module, disagreements listed as findings in the JSON, terminal, JUnit and HTML
reports. The static verdicts themselves come from builder.modules (tested on real modules in
tests/unit/builder/modules); here they are given, and the boot's side is a smoke report."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console

from harness.matrix import html
from harness.matrix.cells import Cell
from harness.matrix.report import Run, print_table, write_junit
from harness.matrix.results import FAIL, PASS, Attempt, CellResult, Verdict
from harness.matrix.static import ModuleCell, disagreements, with_boot

STATIC = [
    ModuleCell("v4l2loopback", "6.1.0-57-amd64", "loads", ("vermagic matches",)),
    ModuleCell("hello", "6.1.0-57-amd64", "needs-rebuild", ("built for 6.1.0-57-amd64",)),
]


def _report(v4l2: bool, hello: bool) -> dict:
    return {"Checks": [
        {"Name": "out-of-tree-v4l2loopback", "Passed": v4l2, "Actual": "loaded from /x",
         "Expected": "loaded", "Detail": ""},
        {"Name": "out-of-tree-hello", "Passed": hello, "Actual": "modprobe failed: not found",
         "Expected": "loaded", "Detail": ""},
    ]}  # fmt: skip


def test_boot_side_and_agreement() -> None:
    agree = with_boot(STATIC, _report(True, False))
    assert [m.agree for m in agree] == [True, True]
    differ = with_boot(STATIC, _report(False, True))
    assert [m.agree for m in differ] == [False, False]
    # a cell that never got to its checks has no boot verdict: nothing to compare
    assert [m.agree for m in with_boot(STATIC, {})] == [None, None]


def _run() -> Run:
    good = CellResult(Cell("img", "own"), [Attempt(Verdict(PASS), _report(True, False))])
    good.modules = with_boot(STATIC, _report(True, False))
    bad = CellResult(Cell("img", "sid", "aki-1"),
                     [Attempt(Verdict(FAIL, "x"), _report(False, True))])  # fmt: skip
    bad.modules = with_boot(STATIC, _report(False, True))
    return Run([good, bad], "tcg", 2, 10.0)


def test_disagreements_are_findings_in_every_report(tmp_path: Path) -> None:
    run = _run()
    found = disagreements(run.results)
    assert [(d["Cell"], d["Module"]) for d in found] == [
        ("img × sid", "v4l2loopback"), ("img × sid", "hello")
    ]  # fmt: skip
    doc = run.to_json()
    assert doc["Summary"]["Disagreements"] == 2 and doc["Disagreements"] == found
    own = doc["Cells"][0]["Modules"]
    assert [(m["Module"], m["Static"], m["Boot"], m["Agree"]) for m in own] == [
        ("v4l2loopback", "loads", "loaded", True), ("hello", "needs-rebuild", "not loaded", True)
    ]  # fmt: skip
    buf = io.StringIO()
    print_table(run, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "v4l2loopback: loads / loaded" in text
    assert "static vs boot: img × sid: v4l2loopback static 'loads', boot not loaded" in text
    assert "2 static/boot disagreements" in text
    write_junit(run, tmp_path / "j.xml")
    cases = ET.parse(tmp_path / "j.xml").getroot().iter("testcase")
    module_cases = {(c.get("classname"), c.get("name")): c for c in cases
                    if c.get("name", "").startswith("module ")}  # fmt: skip
    assert module_cases[("img × own", "module hello")].find("failure") is None
    assert module_cases[("img × sid", "module hello")].find("failure") is not None
    page = html.render(run)
    assert 'data-module="hello" data-static="needs-rebuild" data-agree="true"' in page
    assert "static vs boot disagreements" in page and page.count('class="mod disagree"') == 2


def test_a_cell_without_modules_has_no_module_column() -> None:
    plain = CellResult(Cell("img", "own"), [Attempt(Verdict(PASS), {})])
    doc = Run([plain], "tcg", 1, 1.0).to_json()
    assert "Modules" not in doc["Cells"][0] and doc["Disagreements"] == []
