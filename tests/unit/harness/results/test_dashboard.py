"""The dashboard on real SQLite, over HTTP: /api/runs is `results --json`'s document, the
pages carry the cells and points a browser test reads, a token is enforced, and off
loopback one is required."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from builder.errors import BadInput
from harness.cli import main
from harness.matrix.known import KnownIssue
from harness.results import db, queries
from harness.results.dashboard import Dashboard, make_server, serve
from harness.results.known_view import Known
from tests.unit.harness.results.helpers import cell, record_run

T0 = 1_800_000_000.0


@pytest.fixture
def board(tmp_path: Path):  # noqa: ANN201
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    store = db.connect(url)
    for n, own in enumerate(("PASS", "FAIL", "PASS")):
        record_run(store, [cell("debian-pv", "own", own, ssh=10.0 + n),
                           cell("debian-pv", "broken", "FAIL")], T0 + 100 * n)  # fmt: skip
    known = Known([KnownIssue("bug-7", "modules-tree", "known modules bug")])
    b = Dashboard(store, known, token="")
    server = make_server(b, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield b, f"http://127.0.0.1:{server.server_address[1]}", url
    server.shutdown()
    store.close()


def _get(url: str, headers: dict[str, str] | None = None) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
        return r.read().decode()


def test_api_runs_is_results_json(board, capsys) -> None:  # noqa: ANN001
    b, base, url = board
    api = json.loads(_get(f"{base}/api/runs"))
    assert main(["results", "--results-db", url, "--json"]) == 0
    assert api == json.loads(capsys.readouterr().out)
    assert [r["RunId"] for r in api["Runs"]] == [3, 2, 1]
    grid = json.loads(_get(f"{base}/api/runs/2"))
    assert [c["Status"] for c in grid["Cells"]] == ["FAIL", "FAIL"]
    flaky = json.loads(_get(f"{base}/api/flaky"))["Flaky"]
    assert [f["Cell"] for f in flaky] == ["debian-pv × own"]


def test_pages_show_cells_points_and_known_issues(board) -> None:  # noqa: ANN001
    _, base, _ = board
    runs = _get(f"{base}/")
    assert runs.count("data-run=") == 3 and "bug-7" in runs  # the known issues on every page
    grid = _get(f"{base}/runs/2")
    assert 'data-cell="debian-pv × own" data-status="FAIL"' in grid
    assert "FAIL (known bug-7)" in grid  # matched on its evidence now
    timeline = _get(f"{base}/timeline?image=debian-pv")
    assert timeline.count('data-cell="debian-pv × own"') == 3
    chart = _get(f"{base}/boot-times")
    assert chart.count("data-point=") == 2 and "<svg" in chart and "<script" not in chart
    assert "http://" not in chart.replace('xmlns="http://www.w3.org/2000/svg"', "")
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{base}/runs/99")
    assert e.value.code == 400


def test_a_token_is_enforced(board) -> None:  # noqa: ANN001
    b, base, _ = board
    b.token = "s3cret"
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(f"{base}/api/runs")
    assert e.value.code == 401
    assert _get(f"{base}/api/runs", {"Authorization": "Bearer s3cret"}).startswith("{")
    page = _get(f"{base}/?token=s3cret")
    assert "/runs/3?token=s3cret" in page  # links keep it


def test_off_loopback_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="give --token"):
        serve(f"sqlite:///{tmp_path / 'r.sqlite'}", bind="0.0.0.0", port=0)
    assert not (tmp_path / "r.sqlite").exists()
    assert queries.FLAKY_WINDOW == 20
