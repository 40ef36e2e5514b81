"""`amilab matrix` and the results database, without guests: a fake executor gives the
verdicts; the run is recorded, `--baseline last` compares with the previous run of the same
matrix from the database, and JUnit carries the history's verdict for a flaky cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import BadInput, EnvironmentProblem
from harness.matrix import run as run_mod
from harness.matrix.cells import Cell, ImageRow, KernelColumn
from harness.matrix.results import FAIL, PASS, Attempt, CellResult, Evidence, Verdict
from harness.matrix.spec import MatrixSpec
from harness.results import db, queries


class FakeExecutor:
    def __init__(self, verdicts: dict[str, str]) -> None:
        self.verdicts = verdicts

    def run(self, cells: list[Cell], settings, started, done) -> list[CellResult]:  # noqa: ANN001
        out = []
        for c in cells:
            status = self.verdicts[c.key]
            ev = [] if status == PASS else [Evidence(0, "modules-tree: missing")]
            report = {"ImageId": "ami-00000000000000001", "KernelId": "aki-00000000000000002",
                      "KernelRelease": "6.1.0-25-cloud-amd64", "SecondsToSsh": 11.0,
                      "Checks": [], "ConsoleLog": ""}  # fmt: skip
            klass = "" if status == PASS else "module tree missing"
            out.append(CellResult(c, [Attempt(Verdict(status, klass, ev), report, 20.0)]))
        return out


def _spec() -> MatrixSpec:
    return MatrixSpec(
        images=[ImageRow("debian-pv")],
        kernels=[KernelColumn("own", None), KernelColumn("bullseye", "bullseye")],
    )


@pytest.fixture
def no_builds(monkeypatch: pytest.MonkeyPatch, amilab_home: Path) -> Path:
    monkeypatch.setattr(run_mod, "prepare", lambda cells, *a, **k: cells)
    monkeypatch.delenv(db.ENV, raising=False)
    return amilab_home


def _matrix(tmp_path: Path, own: str, n: int, **kw) -> dict:  # noqa: ANN003
    out = tmp_path / f"m{n}.json"
    req = run_mod.MatrixRequest(spec=_spec(), accel="tcg", json_file=out,
                                junit=tmp_path / f"m{n}.xml", **kw)  # fmt: skip
    verdicts = {"debian-pv × own": own, "debian-pv × bullseye": FAIL}
    run_mod.matrix(req, FakeExecutor(verdicts))
    return json.loads(out.read_text())


def test_every_run_is_recorded_and_baseline_last_reads_the_database(
    no_builds: Path, tmp_path: Path
) -> None:
    first = _matrix(tmp_path, PASS, 1, baseline="last")
    assert first["Comparison"]["Baseline"].startswith("no earlier run of this matrix")
    second = _matrix(tmp_path, FAIL, 2, baseline="last")
    assert second["Comparison"]["Baseline"].startswith(f"run {first['RunId']} (")
    assert second["Comparison"]["Regressions"] == ["debian-pv × own"]
    third = _matrix(tmp_path, PASS, 3, baseline="last")
    assert third["Comparison"]["Fixes"] == ["debian-pv × own"]
    store = db.connect()
    assert [r["RunId"] for r in queries.runs(store)] == [third["RunId"], second["RunId"],
                                                         first["RunId"]]  # fmt: skip
    [run] = queries.runs(store, limit=1)
    assert run["Reports"]["json"].endswith("m3.json") and run["Summary"]["PASS"] == 1
    # JUnit: the cell that flipped and came back carries the history's verdict
    junit = (tmp_path / "m3.xml").read_text()
    assert 'name="amilab.history" value="FLAKY in history: 2 flips in 3 runs' in junit
    assert junit.count("amilab.history") == 1
    assert "amilab.history" not in (tmp_path / "m1.xml").read_text()


def test_no_record_writes_nothing(no_builds: Path, tmp_path: Path) -> None:
    doc = _matrix(tmp_path, PASS, 1, record=False)
    assert "RunId" not in doc and not (no_builds / "results.sqlite").exists()


@pytest.mark.parametrize(
    ("url", "error"),
    [("mysql://h/db", BadInput), ("postgresql:///x?host=/nonexistent&connect_timeout=2",
                                  EnvironmentProblem)],
)  # fmt: skip
def test_a_bad_database_stops_the_run_before_any_cell(
    no_builds: Path, tmp_path: Path, url: str, error: type
) -> None:
    req = run_mod.MatrixRequest(spec=_spec(), accel="tcg", json_file=tmp_path / "m.json",
                                results_db=url)  # fmt: skip
    with pytest.raises(error):
        run_mod.matrix(req, FakeExecutor({}))
    assert not (tmp_path / "m.json").exists()
