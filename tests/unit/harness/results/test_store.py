"""The results store on real SQLite: URLs, the versioned schema, recording, and the queries
(runs, grid, history, regressions, flaky, boot-time trend, first broken)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from builder.errors import BadInput, EnvironmentProblem
from harness.results import db as dbmod
from harness.results import debver, queries, record
from tests.unit.harness.results.helpers import cell, record_run

T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> dbmod.Database:
    d = dbmod.connect(f"sqlite:///{tmp_path / 'r.sqlite'}")
    yield d
    d.close()


def test_default_is_sqlite_in_amilab_home(amilab_home: Path, monkeypatch) -> None:
    monkeypatch.delenv(dbmod.ENV, raising=False)
    d = dbmod.connect()
    assert d.dialect == dbmod.SQLITE and (amilab_home / "results.sqlite").exists()
    d.close()
    monkeypatch.setenv(dbmod.ENV, "sqlite:///elsewhere.sqlite")
    assert dbmod.resolve(None) == "sqlite:///elsewhere.sqlite"
    assert dbmod.resolve("postgresql:///x") == "postgresql:///x"


def test_unknown_scheme_is_bad_input_and_nothing_is_made(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown scheme 'mysql'"):
        dbmod.connect("mysql://u:secret@host/db")
    with pytest.raises(BadInput, match="no directory"):
        dbmod.connect(f"sqlite:///{tmp_path}/missing/r.sqlite")
    assert not (tmp_path / "missing").exists()


def test_unreachable_server_is_an_environment_problem(tmp_path: Path) -> None:
    url = f"postgresql:///amilab?host={tmp_path}&user=x&password=secret"
    with pytest.raises(EnvironmentProblem, match="cannot be reached") as e:
        dbmod.connect(url)
    assert "\n" not in str(e.value)


def test_schema_is_applied_once_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    dbmod.connect(f"sqlite:///{path}").close()
    dbmod.connect(str(path)).close()  # a plain path is an SQLite file; applied once only
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM amilab_schema").fetchall() == [(1,)]
    conn.execute("INSERT INTO amilab_schema VALUES (99)")
    conn.commit()
    with pytest.raises(EnvironmentProblem, match="schema version 99; this amilab knows up to 1"):
        dbmod.connect(str(path))
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
    assert conn.execute("SELECT version FROM amilab_schema").fetchall() == [(1,), (99,)]
    conn.close()


def test_a_run_and_its_grid_come_back_as_recorded(store: dbmod.Database) -> None:
    cells = [cell("debian-pv", "own"), cell("debian-pv", "bullseye", "FAIL")]
    cells[0]["Worker"] = {"Address": "tcp://10.0.0.2:1", "Host": "w1", "Accelerator": "tcg"}
    run = record_run(store, cells, T0, reports={"json": "/r/m.json"})
    [listed] = queries.runs(store)
    assert listed["RunId"] == run and listed["Summary"]["PASS"] == 1
    assert listed["Summary"]["FAIL"] == 1 and listed["Workers"][0]["Host"] == "w1"
    assert listed["Started"] == record.iso(T0) and listed["Reports"] == {"json": "/r/m.json"}
    grid = queries.grid(store, "last")
    assert [c["Cell"] for c in grid["Cells"]] == ["debian-pv × own", "debian-pv × bullseye"]
    fail = grid["Cells"][1]
    assert fail["Class"] == "module tree missing" and fail["Evidence"][0]["Text"]
    assert fail["Modules"][0]["Name"] == "modules-tree"  # the module checks, kept apart
    assert grid["Cells"][0]["SecondsToSsh"] == 12.0
    with pytest.raises(BadInput):
        queries.grid(store, "77")


def _three_runs(store: dbmod.Database) -> list[int]:
    """debian-pv × own: PASS, FAIL, PASS; the other two cells never change."""
    ids = []
    for n, own in enumerate(("PASS", "FAIL", "PASS")):
        cells = [cell("debian-pv", "own", own, ssh=10.0 + n),
                 cell("debian-pv", "bullseye", "FAIL", release="5.10.0-32-cloud-amd64"),
                 cell("debian-pv", "broken", "FAIL", klass="guest powered off")]  # fmt: skip
        ids.append(record_run(store, cells, T0 + 100 * n))
    return ids


def test_history_regressions_and_flaky_name_the_changed_cell(store: dbmod.Database) -> None:
    ids = _three_runs(store)
    hist = queries.history(store, "debian-pv", "own")
    assert [h["Status"] for h in hist] == ["PASS", "FAIL", "PASS"]
    assert [h["RunId"] for h in hist] == ids
    regs = queries.regressions(store, since=str(ids[0]))
    assert [(r["Cell"], r["RunId"], r["Now"]) for r in regs] == [
        ("debian-pv × own", ids[1], "PASS")
    ]
    assert queries.regressions(store, since=str(ids[1])) == []  # FAIL -> PASS is a fix
    assert [r["Cell"] for r in queries.regressions(store)] == ["debian-pv × own"]
    # a date: the last result before it is the baseline
    assert [r["Cell"] for r in queries.regressions(store, since=record.iso(T0 + 150))] == []
    assert len(queries.regressions(store, since=record.iso(T0 + 50))) == 1
    [f] = queries.flaky(store)
    assert f["Cell"] == "debian-pv × own" and f["Flips"] == 2 and f["FlipRate"] == 1.0
    assert f["Statuses"] == ["PASS", "FAIL", "PASS"]
    assert queries.previous_run(store, queries.runs(store)[0]["MatrixKey"])["id"] == ids[2]
    status, _ = queries.statuses(store, ids[1])
    assert status["debian-pv × own"] == "FAIL"


def test_a_single_change_is_no_flake_but_a_retry_pass_is(store: dbmod.Database) -> None:
    record_run(store, [cell("a", "own"), cell("b", "own")], T0)
    record_run(store, [cell("a", "own", "FAIL"), cell("b", "own", flaky=True)], T0 + 10)
    [f] = queries.flaky(store)
    assert (f["Cell"], f["PassedOnRetry"], f["RetryRate"]) == ("b × own", 1, 0.5)


def test_known_issues_are_no_regressions(store: dbmod.Database) -> None:
    record_run(store, [cell("a", "own")], T0)
    record_run(store, [cell("a", "own", "FAIL", known="bug-1")], T0 + 10)
    assert queries.regressions(store) == []


def test_boot_time_trend_per_kernel_release(store: dbmod.Database) -> None:
    _three_runs(store)
    [trend] = queries.boot_times(store)
    assert trend["Kernel"] == "6.1.0-25-cloud-amd64" and trend["Labels"] == ["own"]
    assert [p["SecondsToSsh"] for p in trend["Points"]] == [10.0, 12.0]  # the FAIL has none
    assert trend["Change"] == 1.2


def test_first_broken_in_a_series(store: dbmod.Database) -> None:
    rels = ["5.10.0-30", "6.1.0-10", "6.1.0-25", "6.12.9", "7.2.13"]
    cells = [cell("img", f"k{i}", "PASS" if i < 3 else "FAIL", release=r)
             for i, r in enumerate(rels)]  # fmt: skip
    record_run(store, cells, T0)
    fb = queries.first_broken(store, "img", ["k0", "k1", "k2", "k3", "k4", "k5"])
    assert (fb["LastPass"]["Kernel"], fb["FirstFail"]["Kernel"]) == ("k2", "k3")
    assert fb["Untested"] == ["k5"] and fb["Inconsistent"] == []
    auto = queries.first_broken(store, "img")  # by Debian version of the recorded releases
    assert [s["Kernel"] for s in auto["Series"]] == rels
    assert auto["FirstFail"]["Kernel"] == "6.12.9"


def test_timeline_kernels_down_runs_across(store: dbmod.Database) -> None:
    ids = _three_runs(store)
    tl = queries.timeline(store, "debian-pv")
    assert [r["RunId"] for r in tl["Runs"]] == ids
    assert tl["Cells"][0] == "debian-pv × own"
    assert [c["Status"] for c in tl["Grid"][0]] == ["PASS", "FAIL", "PASS"]


def test_import_of_a_matrix_json_report(store: dbmod.Database, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"Cells": [cell("a", "own")], "Accelerator": "tcg", "Jobs": 2,
                                "Seconds": 30, "Started": record.iso(T0)}))  # fmt: skip
    run = record.import_report(store, path)
    assert queries.grid(store, run)["Cells"][0]["Cell"] == "a × own"
    assert queries.runs(store)[0]["Started"] == record.iso(T0)
    path.write_text('{"Cells": [{"x": 1}]}')
    with pytest.raises(BadInput, match="not an `amilab matrix --json` report"):
        record.import_report(store, path)


def test_debian_version_order() -> None:
    vs = ["6.1.0-25-cloud-amd64", "5.10.0-32-cloud-amd64", "6.12.9+bpo-cloud-amd64",
          "6.1.0-9-cloud-amd64", "7.2.13-cloud-amd64", "6.1~rc1"]  # fmt: skip
    assert sorted(vs, key=debver.sort_key) == [
        "5.10.0-32-cloud-amd64", "6.1~rc1", "6.1.0-9-cloud-amd64", "6.1.0-25-cloud-amd64",
        "6.12.9+bpo-cloud-amd64", "7.2.13-cloud-amd64",
    ]  # fmt: skip
    assert debver.compare("1:1.0", "2.0") > 0 and debver.compare("1.0", "1.0") == 0


def test_bad_databases_are_one_line_and_exit_2_or_3(tmp_path: Path, capsys) -> None:
    from harness.cli import main

    newer = tmp_path / "newer.sqlite"
    dbmod.connect(str(newer)).close()
    conn = sqlite3.connect(newer)
    conn.execute("INSERT INTO amilab_schema VALUES (2)")
    conn.commit()
    conn.close()
    cases = [
        (["results", "--results-db", "mysql://h/db"], 2),
        (["results", "--results-db", f"postgresql:///x?host={tmp_path}&connect_timeout=2"], 3),
        (["results", "--results-db", str(newer)], 3),
        (["results", "--results-db", str(newer), "--import", str(tmp_path / "x.json")], 3),
        (
            [
                "bisect",
                "--image",
                "x",
                "--kernel",
                "a",
                "--kernel",
                "b",
                "--results-db",
                "mysql://h/db",
            ],
            2,
        ),  # fmt: skip
    ]
    for argv, code in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("amilab: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newer.sqlite"]
    conn = sqlite3.connect(newer)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
