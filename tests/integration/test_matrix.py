"""`amilab matrix` on real guests (issue 13's acceptance): 3 images × 4 kernels with every
cell's status and class, a broken cell ending within 60 s with its evidence, the HTML report
in headless Chromium, a baseline naming exactly one regression, a QEMU killed from outside
reported as ERROR or flaky (never FAIL), and Ctrl-C leaving reports and no QEMU behind.

The images share one recipe file (built once each, by the matrix itself); the HVM image
boots only its own kernel (other kernels are SKIP there), on both firmwares."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.conftest import AMILAB, ROOT, need, run_amilab

pytestmark = pytest.mark.integration

TIMEOUT = 1800
KERNELS = ("own", "debian-cloud-bullseye", "debian-cloud-sid", "ide-bus")
MATRIX = {
    "images": ["debian-pv", {"image": "debian-hvm", "firmware": ["bios", "uefi"]}, "pv-omit"],
    # own: bookworm's cloud kernel (the recipes' debian-cloud); ide-bus: the same kernel
    # with the root disk on IDE, whose driver the generated ramdisk does not carry
    "kernels": ["own", "debian-cloud-bullseye", "debian-cloud-sid",
                {"name": "ide-bus", "kernel": "own", "disk_bus": "ide"}],
    "exclude": [{"image": "pv-omit", "kernel": "ide-bus"},
                {"image": "debian-hvm", "kernel": "ide-bus"}],
    # firmware on a paravirtual image cannot apply: SKIP
    "include": [{"image": "debian-pv", "kernel": "own", "firmware": "uefi"}],
}  # fmt: skip
PASSING = ("debian-pv × own", "debian-hvm firmware=bios × own", "debian-hvm firmware=uefi × own")
MODULE_TREE = (
    "debian-pv × debian-cloud-bullseye", "debian-pv × debian-cloud-sid", "pv-omit × own",
    "pv-omit × debian-cloud-bullseye", "pv-omit × debian-cloud-sid",
)  # fmt: skip
BROKEN = "debian-pv × ide-bus"
# a known issue (item 4), matched on the console: sid's kernel announces a +deb14 release,
# which no bookworm image has modules for; the two cells it booted in show it as known
KNOWN = {"id": "sid-on-bookworm", "pattern": r"Linux version \S+\+deb14",
         "class": "sid kernel on a bookworm image", "verdict": "FAIL"}  # fmt: skip
KNOWN_CELLS = ("debian-pv × debian-cloud-sid", "pv-omit × debian-cloud-sid")


def _recipes(path: Path, omit_in_pv: bool = False) -> None:
    by_name = {r["name"]: r for r in yaml.safe_load((ROOT / "build.yaml").read_text())["images"]}
    pv = by_name["debian-pv"]
    hvm = dict(by_name["debian-hvm"], disk=dict(by_name["debian-hvm"]["disk"], formats=["raw"]))
    omit = dict(pv, name="pv-omit", modules="omit")
    first = dict(pv, modules="omit") if omit_in_pv else pv
    path.write_text(yaml.safe_dump({"images": [first, hvm, omit]}))


def _matrix(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    result = run_amilab("matrix", *args, env={"AMILAB_HOME": str(home)}, timeout=TIMEOUT)
    return result, time.monotonic() - t0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    out = tmp_path_factory.mktemp("reports")
    _recipes(out / "recipes.yaml")
    (out / "matrix.yaml").write_text(yaml.safe_dump({"recipes": "recipes.yaml", **MATRIX}))
    (out / "known.yaml").write_text(yaml.safe_dump({"known_issues": [KNOWN]}))
    reports = ["--json-file", str(out / "m.json"), "--html", str(out / "m.html")]
    reports += ["--known-issues", str(out / "known.yaml")]
    result, took = _matrix(home, str(out / "matrix.yaml"), *reports, "--junit", str(out / "m.xml"))
    print(f"matrix of {len(json.loads((out / 'm.json').read_text())['Cells'])} cells: {took:.0f} s")
    assert result.returncode == 1, result.stderr[-4000:]  # cells fail, as they must
    doc = json.loads((out / "m.json").read_text())
    return {"home": home, "out": out, "doc": doc, "cells": {c["Cell"]: c for c in doc["Cells"]},
            "stdout": result.stdout}  # fmt: skip


def test_every_cell_has_its_status_and_class(run: dict) -> None:
    cells = run["cells"]
    shown = json.dumps({k: (c["Status"], c["Class"], c["Evidence"][:2]) for k, c in cells.items()},
                       indent=1, ensure_ascii=False)  # fmt: skip
    assert len(cells) == 14, shown
    for key in PASSING:
        assert (cells[key]["Status"], cells[key]["Class"]) == ("PASS", ""), shown
        assert all(c["Passed"] for c in cells[key]["Checks"]), shown
    assert cells["debian-pv × own"]["KernelRelease"].startswith("6.1.")
    for key in MODULE_TREE:
        c = cells[key]
        booted = [e for e in c["Evidence"] if e["Line"] > 0]
        # the console line naming the kernel that booted, with its line number
        assert f"Linux version {c['KernelRelease']}" in booted[0]["Text"], shown
        if key in KNOWN_CELLS:
            assert (c["Status"], c["Class"]) == ("FAIL", KNOWN["class"]), shown
            assert c["KnownIssue"] == KNOWN["id"] and len(c["Evidence"]) == 1, shown
            continue
        assert (c["Status"], c["Class"]) == ("FAIL", "module tree missing"), shown
        assert c["Evidence"][0]["Line"] == 0 and "modules-tree" in c["Evidence"][0]["Text"]
    assert sorted(k for k, c in cells.items() if c["KnownIssue"]) == sorted(KNOWN_CELLS)
    assert run["doc"]["Summary"]["Known"] == len(KNOWN_CELLS)
    assert cells["debian-pv × debian-cloud-bullseye"]["KernelRelease"].startswith("5.10.")
    assert "+deb14" in cells["debian-pv × debian-cloud-sid"]["KernelRelease"]
    skipped = [k for k, c in cells.items() if c["Status"] == "SKIP"]
    assert sorted(skipped) == sorted(
        [f"debian-hvm firmware={f} × {k}" for f in ("bios", "uefi")
         for k in ("debian-cloud-bullseye", "debian-cloud-sid")]
        + ["debian-pv firmware=uefi × own"]
    )  # fmt: skip
    assert cells["debian-pv firmware=uefi × own"]["Class"].startswith("firmware applies to hvm")
    assert all(len(c["Attempts"]) == 1 for c in cells.values() if c["Status"] == "FAIL")
    # the terminal table: images down, kernels across
    assert "amilab matrix" in run["stdout"] and "ide-bus" in run["stdout"]
    assert KNOWN["id"] in (run["out"] / "m.html").read_text()


def test_guests_sharing_the_host_run_on_one_thread_each(run: dict) -> None:
    """Several guests at once under TCG: each QEMU emulates all its vCPUs on one thread
    (order.tcg_thread); alone (--jobs 1, the killed-QEMU test's run) a thread per vCPU."""
    booted = [c for c in run["cells"].values() if c.get("QemuCommand")]
    assert run["doc"]["Jobs"] > 1 and booted
    want = "tcg,thread=single" if run["doc"]["Accelerator"] == "tcg" else "kvm"
    for c in booted:
        accel = c["QemuCommand"][c["QemuCommand"].index("-accel") + 1]
        assert accel == want, (c["Cell"], accel)


def test_broken_cell_ends_within_60_s_with_class_and_evidence(run: dict) -> None:
    c = run["cells"][BROKEN]
    assert (c["Status"], c["Class"]) == ("FAIL", "ramdisk lacks the disk driver"), c["Evidence"]
    assert c["Seconds"] < 60, c["Seconds"]
    # each cell's start, from the run's: the run holds more cells than guests at once, so
    # some start later than the first; none starts after the run's wall time
    starts = [x["StartedAt"] for x in run["cells"].values() if x["Status"] != "SKIP"]
    assert min(starts) < 5 and 0 < max(starts) < run["doc"]["Seconds"], starts
    line = c["Evidence"][0]
    assert "ROOT NOT FOUND" in line["Text"] and "block devices: none" in line["Text"]
    console = Path(c["ConsoleLog"]).read_text(errors="replace").replace("\r", "").split("\n")
    assert line["Text"] in console[line["Line"] - 1]  # the evidence's line number is right
    assert f"{line['Line']:5d}  " in c["ConsoleExcerpt"]


class _Grid(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and a.get("data-cell"):
            self.cells[a["data-cell"] or ""] = a.get("data-status") or ""


def test_html_report_renders_in_headless_chromium(run: dict) -> None:
    chromium = need("chromium", "chromium")
    page = run["out"] / "m.html"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    # offline: a page that needed the network would render without it
    flags += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    grid = _Grid()
    grid.feed(dom)
    assert grid.cells == {k: c["Status"] for k, c in run["cells"].items()}
    shot = page.with_suffix(".png")
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,1800", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_junit_has_a_case_per_cell_and_check(run: dict) -> None:
    text = (run["out"] / "m.xml").read_text()
    assert text.count("<testsuite ") == 14
    assert 'message="ramdisk lacks the disk driver"' in text


def test_baseline_reports_exactly_the_changed_cell(run: dict) -> None:
    """The second run's debian-pv recipe leaves its modules out: `debian-pv × own` went
    from PASS to FAIL; `pv-omit × own` failed both times; the other cells were not run."""
    out = run["out"]
    _recipes(out / "recipes2.yaml", omit_in_pv=True)
    cells = ["--image", "debian-pv", "--image", "pv-omit"]
    result, _ = _matrix(run["home"], "--recipes", str(out / "recipes2.yaml"), *cells,
                        "--baseline", str(out / "m.json"), "--json-file", str(out / "b.json"),
                        "--fail-on", "regression")  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    doc = json.loads((out / "b.json").read_text())
    cmp = doc["Comparison"]
    assert cmp["Regressions"] == ["debian-pv × own"], cmp
    assert cmp["Fixes"] == [] and cmp["New"] == []
    assert sorted(cmp["Vanished"]) == sorted(
        set(run["cells"]) - {"debian-pv × own", "pv-omit × own"}
    )
    changes = {c["Cell"]: c["Change"] for c in doc["Cells"]}
    assert changes == {"debian-pv × own": "regression", "pv-omit × own": ""}
    assert "regression: debian-pv × own" in result.stdout or "regression" in result.stdout


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background test run inherits it ignored


def _start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*AMILAB, "matrix", *args], cwd=ROOT,
                            env={**os.environ, "AMILAB_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip


def _running_qemu(home: Path, console_has: str, seen: set[int], timeout: float = 600) -> int:
    """A QEMU of an instance whose console shows `console_has`; every PID seen is added."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid_file in (home / "instances").glob("i-*/qemu.pid"):
            try:
                pid = int(pid_file.read_text())
                console = home / "logs/instances" / f"{pid_file.parent.name}.console.log"
                seen.add(pid)
                net = pid_file.parent / "network.pid"
                if net.exists():
                    seen.add(int(net.read_text()))
                if console_has in console.read_text(errors="replace"):
                    return pid
            except (OSError, ValueError):
                pass
        time.sleep(0.1)
    raise AssertionError(f"no guest's console showed {console_has!r}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_qemu_killed_from_outside_is_error_or_flaky_never_fail(run: dict, tmp_path: Path) -> None:
    ami = run["cells"]["debian-pv × own"]["ImageId"]
    report = tmp_path / "e.json"
    proc = _start(run["home"], "--image", ami, "--jobs", "1", "--json-file", str(report))
    seen: set[int] = set()
    qemu = _running_qemu(run["home"], "Linux version", seen)  # mid-boot
    os.kill(qemu, signal.SIGKILL)
    _, err = proc.communicate(timeout=TIMEOUT)
    cell = json.loads(report.read_text())["Cells"][0]
    assert cell["Status"] != "FAIL", err[-3000:]
    assert len(cell["Attempts"]) == 2, cell["Attempts"]  # retried once
    first = cell["Attempts"][0]
    assert (first["Status"], first["Class"]) == ("ERROR", "QEMU died"), first
    assert "exit status -9" in first["Evidence"][0]["Text"]
    assert cell["Status"] == "ERROR" or (cell["Status"] == "PASS" and cell["Flaky"] is True)
    assert proc.returncode == (0 if cell["Status"] == "PASS" else 1)
    assert not any(_alive(p) for p in seen)
    if cell.get("QemuCommand") and cell["Accelerator"] == "tcg":  # alone: a thread per vCPU
        assert "tcg,thread=multi" in cell["QemuCommand"], cell["QemuCommand"]


def test_ctrl_c_writes_reports_marks_unfinished_and_leaves_no_qemu(
    run: dict, tmp_path: Path
) -> None:
    ami = run["cells"]["debian-pv × own"]["ImageId"]
    report, page = tmp_path / "i.json", tmp_path / "i.html"
    proc = _start(run["home"], "--image", ami, "--kernel", "own", "--kernel", "debian-cloud-sid",
                  "--jobs", "1", "--json-file", str(report), "--html", str(page))  # fmt: skip
    seen: set[int] = set()
    _running_qemu(run["home"], "Linux version", seen)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    doc = json.loads(report.read_text())
    assert doc["Interrupted"] is True
    assert [(c["Status"], c["Class"], c["NotRun"]) for c in doc["Cells"]] == [
        ("SKIP", "not run", True), ("SKIP", "not run", True)]  # fmt: skip
    assert "not run" in page.read_text()
    assert seen and not any(_alive(p) for p in seen)
    assert not list((run["home"] / "instances").glob("i-*"))


def test_sigkill_of_amilab_leaves_no_qemu(run: dict) -> None:
    """QEMU started from a cell's worker thread still dies with amilab (PR_SET_PDEATHSIG)."""
    ami = run["cells"]["debian-pv × own"]["ImageId"]
    proc = _start(run["home"], "--image", ami, "--jobs", "1")
    seen: set[int] = set()
    _running_qemu(run["home"], "Linux version", seen)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen and not any(_alive(p) for p in seen)
