"""Loopback addresses for instances: two homes on one host never get the same one."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.instances import addresses, store


def _allocate_in(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AMILAB_HOME", str(home))
    with store.locked("addresses"):
        return addresses.allocate()[0]


def test_two_homes_allocating_before_either_binds_get_different_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nothing binds these addresses (no QEMU): only the host-wide lease keeps them apart
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    first = _allocate_in(tmp_path / "a", monkeypatch)
    second = _allocate_in(tmp_path / "b", monkeypatch)
    assert first != second


def test_an_expired_lease_is_handed_out_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(addresses, "LEASE_S", -1.0)
    first = _allocate_in(tmp_path / "a", monkeypatch)
    assert _allocate_in(tmp_path / "b", monkeypatch) == first
