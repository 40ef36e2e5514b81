"""How cells share the machine: longest first (by an earlier run's seconds where there are
some), and each holding the cores its instance type has vCPUs for."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from harness.matrix import baseline, connect, order
from harness.matrix.cells import Cell
from harness.matrix.fleet import DaskExecutor, _resources


def cell(image: str, itype: str = "", kernel: str = "own", arch: str = "x86_64") -> Cell:
    options = {"instance_type": itype} if itype else {}
    return Cell(image, kernel, options=tuple(options.items()), architecture=arch,
                vcpus=order.vcpus(options, arch))  # fmt: skip


def keys(cells: list[Cell]) -> list[str]:
    return [c.key for c in cells]


def test_vcpus_come_from_the_type_or_the_architectures_default() -> None:
    assert order.vcpus({"instance_type": "m1.large"}, "x86_64") == 2
    assert order.vcpus({}, "x86_64") == 1  # m1.small
    assert order.vcpus({}, "arm64") == 2  # t4g.micro
    assert order.vcpus({"instance_type": "no.such"}, "x86_64") == 1


def test_one_vcpu_and_slow_architectures_start_first() -> None:
    cells = [cell("pv", "m1.large"), cell("pv", "m1.small"), cell("arm", arch="arm64"),
             cell("x32", "m1.small", arch="i386"), cell("pv")]  # fmt: skip
    got = keys(order.longest_first(cells, cores=2))
    # arm64 (t4g.micro: 2 vCPUs, 4.1/1.5) > i386 (1.84) > x86_64 on 1 vCPU (1.0, the matrix's
    # order kept: m1.small, then the default type) > x86_64 on 2 vCPUs
    assert got == keys([cells[2], cells[3], cells[1], cells[4], cells[0]])


def test_one_core_makes_every_type_one_vcpu() -> None:
    cells = [cell("pv", "m1.large"), cell("pv", "m1.small")]
    assert keys(order.longest_first(cells, cores=1)) == keys(cells)
    assert order.cores_held(cells[0], 1) == 1


def test_earlier_seconds_rank_and_scale_the_rest(tmp_path: Path) -> None:
    a, b, c = cell("pv", "m1.small", "k1"), cell("pv", "m1.small", "k2"), cell("pv", "m1.large")
    # k1 failed fast last time, k2 took long; the unseen m1.large is scaled from them
    # (20 s per unit of estimate: 13.3 s) and lands between
    report = tmp_path / "old.json"
    report.write_text(json.dumps({"Cells": [
        {"Cell": a.key, "Status": "FAIL", "Attempts": [{"Seconds": 5.0}]},
        {"Cell": b.key, "Status": "PASS", "Attempts": [{"Seconds": 99.0}, {"Seconds": 35.0}]},
        {"Cell": "gone × own", "Status": "PASS", "NotRun": True, "Attempts": []},
    ]}))  # fmt: skip
    earlier = baseline.durations(report)
    assert earlier == {a.key: 5.0, b.key: 35.0}
    assert keys(order.longest_first([a, b, c], cores=2, earlier=earlier)) == keys([b, c, a])


def test_a_cell_asks_for_its_cores_only_where_workers_count_them() -> None:
    big, small = cell("pv", "m1.large"), cell("pv", "m1.small")
    assert _resources(big, 2) == {"VM": 1, "CPU": 2}
    assert _resources(big, 1) == {"VM": 1, "CPU": 1}  # never more than a worker has
    assert _resources(small, 2) == {"VM": 1, "CPU": 1}
    assert _resources(big, None) == {"VM": 1}  # workers started with VM slots only


def test_tcg_budget_lets_a_small_guest_beside_a_large_one_but_not_two_large() -> None:
    assert order.vcpu_budget(2, "tcg") == 3
    assert order.vcpu_budget(2, "kvm") == 2
    assert order.vcpu_budget(1, "tcg") == 1
    assert order.vcpu_budget(2, "tcg", jobs=5) == 5  # --jobs asks for more: it wins
    assert order.vcpu_budget(8, "tcg") == 12


def test_guests_sharing_a_tcg_host_run_on_one_thread_and_hold_one_core() -> None:
    assert order.tcg_thread(1) == "multi" and order.tcg_thread(2) == "single"
    assert order.counts_vcpus("tcg", 1) and order.counts_vcpus("kvm", 4)
    assert not order.counts_vcpus("tcg", 2)
    # the embedded Dask worker then asks a VM slot only, and no start order is simulated
    ex = DaskExecutor(2, accel="tcg")
    ex._vcpus, ex._count_vcpus = order.vcpu_budget(2, "tcg", 2), False
    assert ex.vcpus is None and ex._cores() is None
    ex._count_vcpus = True
    assert ex.vcpus == 3 and ex._cores() == 3


_LOCK = threading.Lock()
_RUNNING: list[str] = []
_TOGETHER: list[tuple[str, ...]] = []


def _fake_cell(kind: str) -> None:
    """A task that only records which kinds of cell run beside it."""
    with _LOCK:
        _RUNNING.append(kind)
        _TOGETHER.append(tuple(sorted(_RUNNING)))
    time.sleep(0.3)
    with _LOCK:
        _RUNNING.remove(kind)


def _run_embedded(cells: list[Cell], budget: int) -> list[tuple[str, ...]]:
    """`cells` as fake tasks on a real embedded cluster (2 VM slots, `budget` vCPUs), in
    the order given, as the matrix submits them; which kinds ran side by side."""
    cluster, client = connect.local_cluster(2, budget)
    _TOGETHER.clear()
    try:
        futures = [
            client.submit(_fake_cell, c.options[0][1], key=f"c{i}", pure=False,
                          resources=_resources(c, budget), priority=len(cells) - i)  # fmt: skip
            for i, c in enumerate(cells)
        ]
        client.gather(futures)
    finally:
        client.close()
        cluster.close()
    return list(_TOGETHER)


def test_the_embedded_cluster_keeps_to_the_budget() -> None:
    """Real Dask scheduling with the matrix's resources: on 2 cores under TCG (budget 3),
    m1.small runs beside m1.large, two m1.large never run together."""
    cells = [cell("pv", "m1.large"), cell("pv", "m1.large"), cell("pv", "m1.small"),
             cell("pv", "m1.small")]  # fmt: skip
    together = _run_embedded(cells, order.vcpu_budget(2, "tcg"))
    assert ("m1.large", "m1.large") not in together
    assert ("m1.large", "m1.small") in together


def test_start_order_pairs_large_guests_with_small_ones() -> None:
    """Half m1.small, half m1.large on 2 VM slots and 3 vCPUs: each m1.large starts beside
    an m1.small (longest first alone would start the m1.small pairs, then each m1.large
    alone, since Dask's worker never starts a task past one that does not fit)."""
    cells = [cell("pv", t, k) for t in ("m1.small", "m1.large") for k in ("a", "b", "c")]
    ranked = order.longest_first(cells, cores=2)
    got = order.start_order(ranked, order.lengths(ranked, 2), jobs=2, budget=3)
    assert sorted(keys(got)) == sorted(keys(cells))
    kinds = [c.vcpus for c in got]
    assert kinds[:4] in ([2, 1, 2, 1], [1, 2, 2, 1], [2, 1, 1, 2], [1, 2, 1, 2]), kinds
    # cells that all hold the same vCPUs: longest first
    same = [cell("pv", "m1.small", k) for k in ("a", "b", "c")]
    assert order.start_order(same, {c.key: float(i) for i, c in enumerate(same)}, 2, 3) == [
        same[2], same[1], same[0]
    ]


def test_the_embedded_cluster_runs_the_start_order_with_large_beside_small() -> None:
    """The simulated order on a real embedded Dask cluster: no m1.large runs alone while
    an m1.small waits."""
    budget = order.vcpu_budget(2, "tcg")
    cells = [cell("pv", t, k) for t in ("m1.small", "m1.large") for k in ("a", "b")]
    ranked = order.longest_first(cells, cores=2)
    todo = order.start_order(ranked, order.lengths(ranked, 2), jobs=2, budget=budget)
    together = _run_embedded(todo, budget)
    assert together.count(("m1.large", "m1.small")) >= 2, together
