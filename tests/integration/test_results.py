"""Results that last (issue 30's acceptance), on as few boots as the acceptance allows.

One real matrix run (debian-pv × its own kernel, bullseye's and a deliberately broken
kernel: a bzImage cut short inside its setup code, which QEMU refuses at once) is recorded
into SQLite; two more runs of the same matrix are that run's report with the own-kernel
cell changed (FAIL in the second, PASS again in the third), recorded with `results
--import`. `--regressions` and `--flaky` must name exactly that cell, and its history its
three verdicts in order. The same runs go into a real PostgreSQL server (started here), where
two homes, as two hosts, record at the same time: each a real matrix run of two broken
kernels and a process importing twenty runs. `bisect` over five kernels (the own AKI, the
same bytes padded, three broken ones) finds the boundary in two boots, one of them real.
The dashboard renders in headless Chromium, with screenshots beside the database.
Boots: the matrix's two guests and bisect's one; the rest fail in QEMU in under a second.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import AMILAB, ROOT, need, run_amilab
from tests.postgres import server

pytestmark = pytest.mark.integration

OWN, BULLSEYE, BROKEN = (
    "debian-pv × own",
    "debian-pv × debian-cloud-bullseye",
    "debian-pv × broken-1",
)


def _broken_kernels(out: Path) -> list[Path]:
    """bzImages cut short inside their setup code: each names the release, QEMU refuses it
    ("invalid kernel header") before the guest runs. Three lengths, three AKIs."""
    vmlinuz = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    assert vmlinuz, "no cloud kernel in /boot (scripts/setup.sh installs linux-image-cloud-amd64)"
    data = Path(vmlinuz[-1]).read_bytes()
    setup = ((data[0x1F1] or 4) + 1) * 512
    paths = []
    for n in (1, 2, 3):
        p = out / f"broken-{n}.vmlinuz"
        p.write_bytes(data[: setup - 16 * n])
        paths.append(p)
    return paths


def _amilab(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 1800):
    res = run_amilab(*args, env={"AMILAB_HOME": str(home), **(env or {})}, timeout=timeout)
    return res


def _json(home: Path, *args: str) -> dict:
    res = _amilab(home, *args, "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("results")
    t0 = time.monotonic()
    for n, path in enumerate(_broken_kernels(out), 1):
        res = _amilab(home, "register-kernel", "--vmlinuz", str(path), "--name", f"broken-{n}")
        assert res.returncode == 0, res.stderr[-2000:]
    db = out / "results.sqlite"
    url = f"sqlite:///{db}"
    res = _amilab(home, "matrix", "--image", "debian-pv", "--kernel", "own",
                  "--kernel", "debian-cloud-bullseye", "--kernel", "broken-1",
                  "--results-db", url, "--json-file", str(out / "run1.json"),
                  "--junit", str(out / "run1.xml"))  # fmt: skip
    assert res.returncode == 1, res.stderr[-4000:]  # bullseye and broken fail
    run1 = json.loads((out / "run1.json").read_text())
    print(f"the real matrix run: {time.monotonic() - t0:.0f} s")
    # runs 2 and 3: the same matrix's report, the own-kernel cell FAIL, then PASS again
    reports = [out / "run1.json"]
    for n, own in ((2, "FAIL"), (3, "PASS")):
        doc = copy.deepcopy(run1)
        doc.pop("RunId", None)
        doc["Started"] = f"2099-01-0{n}T00:00:00.000000Z"
        doc["Ended"] = f"2099-01-0{n}T00:05:00.000000Z"
        cell = next(c for c in doc["Cells"] if c["Cell"] == OWN)
        if own == "FAIL":
            cell.update(Status="FAIL", Class="init failed / emergency mode", Passed=False,
                        Evidence=[{"Line": 812, "Text": "You are in emergency mode."}])  # fmt: skip
        path = out / f"run{n}.json"
        path.write_text(json.dumps(doc))
        reports.append(path)
        res = _amilab(home, "results", "--results-db", url, "--import", str(path))
        assert res.returncode == 0, res.stderr
    return {"home": home, "out": out, "url": url, "run1": run1, "reports": reports}


def test_matrix_records_every_cell_with_its_facts(real: dict) -> None:
    cells = {c["Cell"]: c for c in real["run1"]["Cells"]}
    assert (cells[OWN]["Status"], cells[BULLSEYE]["Status"]) == ("PASS", "FAIL")
    assert cells[BROKEN]["Status"] == "FAIL" and cells[BROKEN]["Seconds"] < 30, cells[BROKEN]
    grid = _json(real["home"], "results", "--results-db", real["url"], "--run", "1")
    assert grid["RunId"] == real["run1"]["RunId"] == 1 and grid["Kind"] == "matrix"
    got = {c["Cell"]: c for c in grid["Cells"]}
    assert list(got) == [OWN, BULLSEYE, BROKEN]
    own = got[OWN]
    assert own["KernelRelease"].startswith("6.1.") and own["SecondsToSsh"] > 0
    assert own["ImageId"].startswith("ami-") and own["KernelId"].startswith("aki-")
    assert Path(own["ConsoleLog"]).exists() and own["BootPhases"]
    assert got[BROKEN]["KernelName"] == "broken-1" and got[BROKEN]["Evidence"]
    assert got[BULLSEYE]["Class"] == "module tree missing" and got[BULLSEYE]["Modules"]
    assert grid["Reports"]["json"].endswith("run1.json") and grid["Host"]


def _acceptance_queries(home: Path, url: str) -> None:
    runs = _json(home, "results", "--results-db", url)["Runs"]
    first = min(r["RunId"] for r in runs)
    regs = _json(home, "results", "--results-db", url, "--regressions", "--since", str(first))
    assert [r["Cell"] for r in regs["Regressions"]] == [OWN], regs
    assert regs["Regressions"][0]["Evidence"][0]["Text"] == "You are in emergency mode."
    flaky = _json(home, "results", "--results-db", url, "--flaky")["Flaky"]
    assert [f["Cell"] for f in flaky] == [OWN], flaky
    hist = _json(home, "results", "--results-db", url, "--image", "debian-pv", "--kernel", "own")
    assert [h["Status"] for h in hist["History"]] == ["PASS", "FAIL", "PASS"]


def test_regressions_flaky_and_history_on_sqlite(real: dict) -> None:
    _acceptance_queries(real["home"], real["url"])


def test_the_same_on_postgresql_with_two_hosts_recording_at_once(real: dict) -> None:
    home_a, out = real["home"], real["out"]
    # a second host: its own home with the same images (the registry copied, the immutable
    # artifacts hard-linked)
    home_b = out / "home-b"
    home_b.mkdir()
    shutil.copy2(home_a / "registry.sqlite", home_b / "registry.sqlite")
    subprocess.run(["cp", "-al", str(home_a / "artifacts"), str(home_b / "artifacts")], check=True)
    ami = real["run1"]["Cells"][0]["ImageId"]
    with server() as url:
        for path in real["reports"]:
            res = _amilab(home_a, "results", "--results-db", url, "--import", str(path))
            assert res.returncode == 0, res.stderr
        _acceptance_queries(home_a, url)
        procs = []
        loop = (
            "import sys; from pathlib import Path; from harness.results import db, record\n"
            "s = db.connect(sys.argv[1])\n"
            "for n in range(20):\n"
            "    record.import_report(s, Path(sys.argv[2]), f'loop {n}')\n"
        )
        for home, host in ((home_a, "host-a"), (home_b, "host-b")):
            env = {**os.environ, "AMILAB_HOME": str(home), "AMILAB_RESULTS_HOST": host}
            procs.append(
                subprocess.Popen(
                    [
                        *AMILAB,
                        "matrix",
                        "--image",
                        ami,
                        "--kernel",
                        "broken-2",
                        "--kernel",
                        "broken-3",
                        "--results-db",
                        url,
                        "--json-file",
                        str(out / f"{host}.json"),
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            procs.append(subprocess.Popen(
                [sys.executable, "-c", loop, url, str(real["reports"][0])], cwd=ROOT, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode in (0, 1), err[-3000:]
        runs = _json(home_a, "results", "--results-db", url, "--limit", "500")["Runs"]
        for host in ("host-a", "host-b"):
            mine = [r for r in runs if r["Host"] == host]
            assert len(mine) == 21, [(r["Kind"], r["Name"]) for r in mine]
            [matrix] = [r for r in mine if r["Kind"] == "matrix"]
            grid = _json(home_a, "results", "--results-db", url, "--run", str(matrix["RunId"]))
            want = json.loads((out / f"{host}.json").read_text())["Cells"]
            assert [(c["Cell"], c["Status"]) for c in grid["Cells"]] == [
                (c["Cell"], c["Status"]) for c in want
            ]
            assert all(c["Status"] == "FAIL" for c in grid["Cells"])
            assert grid["Home"] == str(home_a if host == "host-a" else home_b)
            for r in mine:
                if r["Kind"] == "import":
                    assert sum(r["Summary"][s] for s in ("PASS", "FAIL", "ERROR", "SKIP")) == 3


def test_bisect_finds_the_boundary_in_log_boots(real: dict) -> None:
    home, out = real["home"], real["out"]
    own = next(c for c in real["run1"]["Cells"] if c["Cell"] == OWN)["KernelId"]
    kernels = _json(home, "images", "--type", "kernel")["Images"]
    vmlinuz = Path(next(k for k in kernels if k["ImageId"] == own)["ImageLocation"])
    padded = out / "own-padded.vmlinuz"  # the same kernel, other bytes: another AKI
    padded.write_bytes(vmlinuz.read_bytes() + b"\0" * 4096)
    res = _amilab(home, "register-kernel", "--vmlinuz", str(padded), "--name", "own-padded")
    assert res.returncode == 0, res.stderr
    series = [own, "own-padded", "broken-1", "broken-2", "broken-3"]
    t0 = time.monotonic()
    args = [x for k in series for x in ("--kernel", k)]
    res = _amilab(home, "bisect", "--image", "debian-pv", *args, "--results-db", real["url"])
    print(f"bisect over {len(series)} kernels: {time.monotonic() - t0:.0f} s\n{res.stdout}")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    boots = int(lines[0].split()[0])
    assert boots <= 4 and lines[0].endswith("(bound 4)"), lines[0]  # ⌈log2 5⌉ + 1
    assert any(x.startswith("newest passing: own-padded") and "PASS" in x for x in lines)
    assert any(x.startswith("oldest failing: broken-1") and "FAIL" in x for x in lines)
    assert "check: " in res.stdout or "console:" in res.stdout  # the failing cell's evidence
    runs = _json(home, "results", "--results-db", real["url"])["Runs"]
    assert len([r for r in runs if r["Kind"] == "bisect"]) == boots  # every boot recorded


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.points: list[dict[str, str]] = []
        self.runs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-cell" in a:
            self.cells.append(a)
        elif tag == "circle" and "data-point" in a:
            self.points.append(a)
        elif tag == "tr" and "data-run" in a:
            self.runs.append(a["data-run"])


def test_dashboard_in_headless_chromium(real: dict) -> None:
    chromium = need("chromium", "chromium")
    out, home, url = real["out"], real["home"], real["url"]
    proc = subprocess.Popen([*AMILAB, "dashboard", "--port", "0", "--results-db", url],
                            cwd=ROOT, env={**os.environ, "AMILAB_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        base = line.split(" at ", 1)[1].strip().rstrip("/")
        import urllib.request

        with urllib.request.urlopen(f"{base}/api/runs") as r:
            api = json.loads(r.read())
        assert api == _json(home, "results", "--results-db", url)  # the same document
        # offline but for the dashboard on loopback (which Chromium never proxies): a page
        # that fetched anything from elsewhere would render without it
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--proxy-server=127.0.0.1:9"]  # fmt: skip
        pages = {"runs": "/", "grid": "/runs/1", "timeline": "/timeline?image=debian-pv",
                 "boot-times": "/boot-times"}  # fmt: skip
        doms = {}
        for name, path in pages.items():
            got = subprocess.run([*flags, "--dump-dom", base + path], capture_output=True,
                                 text=True, timeout=120, check=True)  # fmt: skip
            doms[name] = _Dom()
            doms[name].feed(got.stdout)
            shot = out / f"dashboard-{name}.png"
            subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,900",
                            base + path], capture_output=True, timeout=120, check=True)  # fmt: skip
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert doms["runs"].runs == [str(r["RunId"]) for r in api["Runs"]]
    grid = {c["data-cell"]: c["data-status"] for c in doms["grid"].cells}
    assert grid == {c["Cell"]: c["Status"] for c in real["run1"]["Cells"]}
    own = [c["data-status"] for c in doms["timeline"].cells if c["data-cell"] == OWN]
    assert own[:3] == ["PASS", "FAIL", "PASS"], own
    points = [p for p in doms["boot-times"].points]
    trend = _json(home, "results", "--results-db", url, "--boot-times")["BootTimes"]
    assert len(points) == sum(len(t["Points"]) for t in trend) >= 2
    assert {p["data-kernel"] for p in points} == {t["Kernel"] for t in trend}
