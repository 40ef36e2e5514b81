"""The reports of one run: JSON (one object per cell), JUnit (a case per cell and check),
HTML (a self-contained grid), and the terminal table."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

from rich.console import Console

from harness.matrix import html
from harness.matrix.baseline import Comparison
from harness.matrix.cells import Cell
from harness.matrix.report import Run, print_table, write_junit
from harness.matrix.results import ERROR, FAIL, PASS, Attempt, CellResult, Evidence, Verdict

CHECKS = [{"Name": "kernel-release", "Passed": True, "Expected": "6.1", "Actual": "6.1",
           "Detail": ""},
          {"Name": "modules-tree", "Passed": False, "Expected": "/lib/modules/6.1",
           "Actual": "missing", "Detail": "no tree"}]  # fmt: skip


def sample_run() -> Run:
    ok = Attempt(Verdict(PASS), {"InstanceId": "i-1", "Checks": CHECKS[:1], "Passed": True,
                                 "BootPhases": {"firmware": 1.0, "kernel": 2.0, "init": 3.0},
                                 "QemuCpuSecondsToSsh": 7.5})  # fmt: skip
    why = [Evidence(0, "modules-tree: missing")]
    fields = {"InstanceId": "i-2", "Checks": CHECKS}
    bad = Attempt(
        Verdict(FAIL, "module tree missing", why), fields, console_excerpt="  12  <panic>"
    )
    died = Attempt(Verdict(ERROR, "QEMU died", [Evidence(40, "[ 3.0] random")]), {})
    results = [
        CellResult(Cell("pv", "own"), [ok]),
        CellResult(Cell("pv", "sid", "aki-1"), [bad]),
        CellResult(
            Cell("hvm", "own", options=(("firmware", "uefi"),), row_options=("firmware",)),
            [died, ok],
        ),  # fmt: skip
        CellResult(Cell("hvm", "sid", "aki-1", skip="another kernel applies to paravirtual")),
        CellResult(Cell("omit", "own"), not_run=True),
    ]
    return Run(results, "tcg", 2, 61.0, interrupted=True,
               comparison=Comparison("old.json", {"pv × sid": "regression"}))  # fmt: skip


def test_json_has_one_object_per_cell() -> None:
    doc = sample_run().to_json()
    cells = {c["Cell"]: c for c in doc["Cells"]}
    assert list(cells) == ["pv × own", "pv × sid", "hvm firmware=uefi × own", "hvm × sid",
                           "omit × own"]  # fmt: skip
    assert (
        cells["pv × sid"]["Status"] == FAIL and cells["pv × sid"]["Class"] == "module tree missing"
    )
    assert cells["pv × sid"]["Change"] == "regression" and cells["pv × sid"]["InstanceId"] == "i-2"
    assert cells["pv × sid"]["Evidence"] == [{"Line": 0, "Text": "modules-tree: missing"}]
    flaky = cells["hvm firmware=uefi × own"]
    assert flaky["Status"] == PASS and flaky["Flaky"] is True
    assert [a["Status"] for a in flaky["Attempts"]] == [ERROR, PASS]
    assert cells["hvm × sid"]["Status"] == "SKIP" and cells["omit × own"]["NotRun"] is True
    assert doc["Summary"] == {"PASS": 2, "FAIL": 1, "ERROR": 0, "SKIP": 2, "Flaky": 1,
                              "NotRun": 1, "Known": 0, "Disagreements": 0}  # fmt: skip
    assert doc["Interrupted"] is True and doc["Comparison"]["Regressions"] == ["pv × sid"]
    json.dumps(doc)


def test_junit_cases(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    write_junit(sample_run(), path)
    suites = ET.parse(path).getroot().findall("testsuite")
    assert [s.get("name") for s in suites][:2] == ["pv × own", "pv × sid"]
    sid = suites[1]
    assert sid.get("failures") == "1" and len(sid.findall("testcase")) == 3
    assert sid.find("testcase/failure").get("message") == "module tree missing"
    assert suites[3].find("testcase/skipped") is not None


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-cell" in a:
            self.cells[a["data-cell"] or ""] = a["data-status"] or ""
        for k in ("src", "href"):
            if a.get(k) and not (a[k] or "").startswith("#"):
                self.external.append(a[k] or "")


def test_html_grid_is_self_contained(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    html.write(sample_run(), path)
    page = _Cells()
    page.feed(path.read_text())
    assert page.cells == {"pv × own": PASS, "pv × sid": FAIL, "hvm firmware=uefi × own": PASS,
                          "hvm × sid": "SKIP", "omit × own": "SKIP"}  # fmt: skip
    assert page.external == []
    text = path.read_text()
    assert "regression" in text and "console:40: [ 3.0] random" in text
    assert "&lt;panic&gt;" in text and 'title="init 3.00 s"' in text


def test_terminal_table() -> None:
    out = io.StringIO()
    print_table(sample_run(), Console(file=out, width=200))
    text = out.getvalue()
    assert "✗ FAIL" in text and "~ FLAKY" in text and "regression" in text
    assert "pv × sid: FAIL module tree missing" in text and "check: modules-tree: missing" in text
    assert "1 not run (interrupted)" in text
