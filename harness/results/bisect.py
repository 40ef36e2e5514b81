"""`amilab bisect`: the first kernel of an ordered series that breaks an image, in O(log n)
boots.

The series is assumed monotone (every kernel before the boundary passes, every one from it
on fails), as `git bisect` assumes of commits. The search is a lower bound over the n + 1
places the boundary can be (before the first kernel, between two, after the last), so it
boots at most ⌈log2(n + 1)⌉ kernels (≤ ⌈log2 n⌉ + 1), and the two kernels either side of the
boundary are always among those booted: their cells' evidence is the answer's. A kernel
whose cell ends in ERROR (after its retries) or SKIP tells nothing about the image: it is
left out of the series and the search goes on without it, as `git bisect skip` does.
Every boot is recorded in the results database as a run of kind `bisect`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.matrix.results import FAIL, PASS, CellResult
from harness.results import record
from harness.results.db import Database


@dataclass
class Boundary:
    last_pass: int | None  # index of the newest kernel that passes before the boundary
    first_fail: int | None  # index of the oldest kernel that fails
    probed: list[tuple[int, str]] = field(default_factory=list)  # (index, status) in order
    skipped: list[int] = field(default_factory=list)  # ERROR or SKIP: left out


def max_boots(n: int) -> int:
    """The bound the search keeps to (the issue's ⌈log2 n⌉ + 1)."""
    return math.ceil(math.log2(n)) + 1 if n > 1 else 1


def search(n: int, probe: Callable[[int], str]) -> Boundary:
    """The boundary of a series of n kernels; `probe(i)` boots kernel i, returns its status."""
    cands = list(range(n))
    lo, hi = 0, n
    out = Boundary(None, None)
    while lo < hi:
        mid = (lo + hi) // 2
        index = cands[mid]
        status = probe(index)
        out.probed.append((index, status))
        if status not in (PASS, FAIL):
            out.skipped.append(index)
            del cands[mid]
            hi -= 1
        elif status == FAIL:
            hi = mid
        else:
            lo = mid + 1
    out.first_fail = cands[lo] if lo < len(cands) else None
    out.last_pass = cands[lo - 1] if lo > 0 else None
    return out


@dataclass
class BisectRequest:
    image: str
    kernels: list[str]
    recipes: Path = Path("build.yaml")
    accel: str = "auto"
    ssh_timeout: float = 300.0
    retries: int = 1
    known_issues: Path | None = None
    results_db: str | None = None
    quiet: bool = False


def bisect(req: BisectRequest, store: Database, say: Callable[[str], None]) -> dict[str, Any]:
    """Boot what the search asks for, record each boot, and answer with the boundary."""
    from harness.launch import accel
    from harness.matrix import known, spec
    from harness.matrix.cell_run import RunSettings, run_cell
    from harness.matrix.prepare import prepare
    from harness.matrix.report import Run

    cells = spec.from_arguments([req.image], req.kernels, {}, [], req.recipes).cells()
    cells = prepare(cells, req.recipes, say, quiet=req.quiet)
    chosen = accel.choose(req.accel)
    issues = tuple(known.load(req.known_issues)) if req.known_issues else ()
    settings = RunSettings(chosen.name, chosen.reason, req.ssh_timeout, req.retries, False, issues)
    results: dict[int, tuple[CellResult, int]] = {}
    say(f"bisect {req.image} over {len(cells)} kernels (at most {max_boots(len(cells))} boots); "
        f"accelerator: {chosen.describe()}")  # fmt: skip

    def probe(i: int) -> str:
        cell = cells[i]
        started = time.time()
        r = CellResult(cell) if cell.skip else run_cell(cell, settings)
        run = Run([r], chosen.name, 1, time.time() - started, started=started)
        info = record.RunInfo(
            "bisect", f"bisect {req.image}", started, time.time(), chosen.name, 1,
            options={"Series": req.kernels, "Index": i},
        )  # fmt: skip
        run_id = record.write_run(store, info, run.to_json()["Cells"])
        results[i] = (r, run_id)
        say(f"  {cell.kernel}: {r.status} {r.verdict.klass} (run {run_id})")
        return r.status

    found = search(len(cells), probe)

    def side(i: int | None) -> dict[str, Any] | None:
        if i is None:
            return None
        r, run_id = results[i]
        return {**r.to_json(), "RunId": run_id, "Index": i}

    return {
        "Image": req.image,
        "Kernels": req.kernels,
        "Boots": sum(not cells[i].skip for i, _ in found.probed),
        "MaxBoots": max_boots(len(cells)),
        "Probed": [
            {"Kernel": req.kernels[i], "Status": s, "RunId": results[i][1]} for i, s in found.probed
        ],
        "Skipped": [req.kernels[i] for i in found.skipped],
        "LastPass": side(found.last_pass),
        "FirstFail": side(found.first_fail),
    }
