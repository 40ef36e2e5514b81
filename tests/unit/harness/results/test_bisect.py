"""The bisect search: every boundary of every series up to 17 kernels found within
⌈log2 n⌉ + 1 boots, with both kernels either side of it booted; ERROR kernels left out."""

from __future__ import annotations

import pytest

from harness.results.bisect import max_boots, search


@pytest.mark.parametrize("n", range(1, 18))
def test_every_boundary_within_the_bound(n: int) -> None:
    for boundary in range(n + 1):  # kernels from `boundary` on fail
        booted: list[int] = []

        def probe(i: int, b: int = boundary, seen: list[int] = booted) -> str:
            seen.append(i)
            return "FAIL" if i >= b else "PASS"

        found = search(n, probe)
        assert found.first_fail == (boundary if boundary < n else None)
        assert found.last_pass == (boundary - 1 if boundary > 0 else None)
        assert len(booted) <= max_boots(n), (n, boundary, booted)
        for side in (found.first_fail, found.last_pass):
            assert side is None or side in booted  # its evidence is at hand


def test_an_error_is_left_out_like_git_bisect_skip() -> None:
    statuses = ["PASS", "PASS", "ERROR", "FAIL", "FAIL", "FAIL"]
    found = search(len(statuses), lambda i: statuses[i])
    assert (found.last_pass, found.first_fail, found.skipped) == (1, 3, [2])


def test_the_bound_is_the_issues() -> None:
    assert [max_boots(n) for n in (2, 4, 5, 8, 9, 16)] == [2, 3, 4, 4, 5, 5]
