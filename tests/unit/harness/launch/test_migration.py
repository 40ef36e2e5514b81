"""Saving a guest's state to a file and loading it back (harness.launch.migration): the
fingerprint that decides whether a state still fits, and a real QEMU (no guest: qboot with no
kernel) saved, failing to save, and loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.launch import migration
from harness.launch.process import QemuProcess

QMP = "qmp.sock"


def test_without_incoming_and_the_fingerprint_ignore_only_the_incoming_part() -> None:
    argv = ["qemu-system-x86_64", "-m", "1740", "-drive", "file=a.qcow2"]
    assert migration.without_incoming(argv + migration.INCOMING) == argv
    assert migration.without_incoming(["q", "-incoming", "defer", "-m", "1"]) == ["q", "-m", "1"]
    v = "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert migration.fingerprint(v, argv) == migration.fingerprint(v, argv + migration.INCOMING)
    assert migration.fingerprint(v, argv) != migration.fingerprint("8.2.0", argv)
    assert migration.fingerprint(v, argv) != migration.fingerprint(v, argv + ["-drive", "b"])
    assert migration.fingerprint(v, argv) != migration.fingerprint(v, list(reversed(argv)))
    assert migration.differences(argv, argv + ["-drive", "file=b.qcow2"]) == "now file=b.qcow2"
    assert "no longer file=a.qcow2" in migration.differences(argv, argv[:-1] + ["file=c"])


def test_the_binary_and_qmp_spell_a_version_alike() -> None:
    line = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) ..."
    qmp = {"qemu": {"major": 7, "minor": 2, "micro": 22},
           "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}  # fmt: skip
    assert migration.parse_version_output(line) == migration.version_from_qmp(qmp)
    assert migration.parse_version_output("QEMU emulator version 8.2.0\n") == "8.2.0"
    assert migration.version_from_qmp({"qemu": {"major": 8, "minor": 2, "micro": 0},
                                       "package": ""}) == "8.2.0"  # fmt: skip
    assert migration.parse_version_output("no such thing") is None
    assert migration.binary_version("/nonexistent/qemu") is None


def _qemu(tmp_path: Path, *extra: str) -> QemuProcess:
    argv = ["qemu-system-x86_64", "-machine", "pc", "-nodefaults", "-display", "none",
            "-m", "64", "-bios", "qboot.rom", "-qmp", f"unix:{QMP},server=on,wait=off",
            *extra]  # fmt: skip
    (tmp_path / QMP).unlink(missing_ok=True)
    q = QemuProcess(argv, tmp_path, tmp_path / "qemu.log")
    q.start()
    return q


def test_a_state_saves_completely_or_not_at_all_and_loads_back(tmp_path: Path) -> None:
    pytest.importorskip("qemu.qmp")
    src = _qemu(tmp_path)
    try:
        mon = src.qmp(tmp_path / QMP)
        assert mon.cmd("query-status")["running"]
        # a save that cannot be written: the guest runs on, nothing is left behind
        bad = tmp_path / "missing-dir" / "state"
        with pytest.raises(migration.MigrationFailed):
            migration.save(mon, bad, timeout=30)
        assert mon.cmd("query-status")["running"]
        assert not bad.parent.exists()
        dest = tmp_path / "vol.hibernation"
        version, size = migration.save(mon, dest, timeout=30)
        assert version == migration.binary_version("qemu-system-x86_64")
        assert dest.stat().st_size == size > 0
        assert sorted(p.name for p in tmp_path.iterdir() if "hibernation" in p.name) == [
            dest.name]  # fmt: skip
        assert mon.cmd("query-status")["status"] == "postmigrate"  # paused until told
    finally:
        src.stop(tmp_path / QMP)
    dst = _qemu(tmp_path, *migration.INCOMING)
    try:
        mon = dst.qmp(tmp_path / QMP)
        assert mon.cmd("query-status")["status"] == "inmigrate"
        info = migration.load(mon, dest)
        assert info["status"] == "completed"
        assert mon.cmd("query-status")["running"]
    finally:
        dst.stop(tmp_path / QMP)
