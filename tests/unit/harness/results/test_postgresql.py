"""The store on a real PostgreSQL server (started here: ~2 s): the schema, a run, the
queries, and two writers at once."""

from __future__ import annotations

import threading

import pytest

from harness.results import db, queries
from tests.postgres import server
from tests.unit.harness.results.helpers import cell, record_run


@pytest.fixture(scope="module")
def pg_url() -> str:
    with server() as url:
        yield url


def test_schema_run_and_queries_on_postgresql(pg_url: str) -> None:
    store = db.connect(pg_url)
    assert store.dialect == db.POSTGRESQL
    for n, own in enumerate(("PASS", "FAIL", "PASS")):
        record_run(store, [cell("pg-img", "own", own), cell("pg-img", "k2", "FAIL")], 1e9 + n)
    assert [h["Status"] for h in queries.history(store, "pg-img", "own")] == [
        "PASS",
        "FAIL",
        "PASS",
    ]
    assert [r["Cell"] for r in queries.regressions(store)] == ["pg-img × own"]
    assert [f["Cell"] for f in queries.flaky(store)] == ["pg-img × own"]
    assert queries.runs(store)[0]["Summary"]["PASS"] == 1
    store.close()
    db.connect(pg_url).close()  # the schema is there: applied once


def test_two_writers_at_once(pg_url: str) -> None:
    def write(host: str) -> None:
        s = db.connect(pg_url)
        for n in range(10):
            record_run(s, [cell(f"w-{host}", "own"), cell(f"w-{host}", "k2")], 2e9 + n, host=host)
        s.close()

    threads = [threading.Thread(target=write, args=(h,)) for h in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = db.connect(pg_url)
    hosts = {r["Host"] for r in queries.runs(store, 100) if r["Host"] in ("a", "b")}
    assert hosts == {"a", "b"}
    for h in ("a", "b"):
        assert len(queries.history(store, f"w-{h}")) == 20
    store.close()
