"""Comparing with an earlier run: exactly the changed cells are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import BadInput
from harness.matrix import baseline
from harness.matrix.cells import Cell
from harness.matrix.results import ERROR, FAIL, PASS, Attempt, CellResult, Verdict


def result(image: str, status: str, known: str = "") -> CellResult:
    return CellResult(Cell(image, "own"), [Attempt(Verdict(status, "c", known_issue=known))])


def old_report(tmp_path: Path, cells: dict[str, str]) -> Path:
    path = tmp_path / "old.json"
    doc = {"Cells": [{"Cell": k, "Status": v} for k, v in cells.items()]}
    path.write_text(json.dumps(doc))
    return path


def test_regressions_fixes_new_vanished(tmp_path: Path) -> None:
    old = baseline.load(
        old_report(
            tmp_path,
            {
                "a × own": PASS,
                "b × own": FAIL,
                "c × own": PASS,
                "gone × own": PASS,
                "k × own": PASS,
                "e × own": PASS,
            },
        )  # fmt: skip
    )
    now = [result("a", FAIL), result("b", PASS), result("c", PASS), result("n", FAIL),
           result("k", FAIL, known="bug-1"), result("e", ERROR)]  # fmt: skip
    cmp = baseline.compare(old, now, "old.json")
    assert cmp.regressions == ["a × own"]
    assert cmp.fixes == ["b × own"] and cmp.new == ["n × own"] and cmp.vanished == ["gone × own"]
    assert cmp.of("c × own") == "" and cmp.of("k × own") == "" and cmp.of("e × own") == ""


def test_not_run_cells_are_neither_compared_nor_counted(tmp_path: Path) -> None:
    old = baseline.load(old_report(tmp_path, {"a × own": PASS}))
    cmp = baseline.compare(old, [CellResult(Cell("a", "own"), not_run=True)], "x")
    assert cmp.changes == {} and cmp.vanished == []


@pytest.mark.parametrize(("text", "message"), [("{", "not JSON"), ('{"x": 1}', "no Cells")])
def test_bad_baseline(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "old.json"
    path.write_text(text)
    with pytest.raises(BadInput, match=message):
        baseline.load(path)
    with pytest.raises(BadInput, match="No such file"):
        baseline.load(tmp_path / "missing.json")
