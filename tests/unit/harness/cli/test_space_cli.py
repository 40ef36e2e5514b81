"""`amilab df` and `amilab prune` on the command line, and the CLI's last net for a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.state import space
from harness.cli import main
from tests.conftest import run_amilab


@pytest.fixture
def home(amilab_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/conftest.py's AMILAB_HOME, an empty cache beside it, and an artifact folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(amilab_home.parent / "cache"))
    (amilab_home / "artifacts" / "ab").mkdir(parents=True)
    return amilab_home


def test_df_json_has_every_kind_and_adds_up(home: Path, capsys: pytest.CaptureFixture) -> None:
    orphan = home / "artifacts" / "ab" / ("ab" * 32 + ".raw")
    orphan.write_bytes(os.urandom(1 << 20))
    assert main(["df", "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    rows = {r["Type"]: r for r in usage["Space"]}
    assert list(rows) == list(space.KINDS)
    assert set(rows["Unreferenced"]) == {"Type", "Count", "SizeBytes", "ReclaimableBytes"}
    assert rows["Unreferenced"]["Count"] == 1
    assert rows["Unreferenced"]["ReclaimableBytes"] == orphan.stat().st_blocks * 512
    assert usage["TotalBytes"] == sum(r["SizeBytes"] for r in usage["Space"])
    assert usage["Filesystems"][0]["AvailableBytes"] > 0


def test_prune_shows_then_removes(home: Path, capsys: pytest.CaptureFixture) -> None:
    orphan = home / "artifacts" / "ab" / ("ab" * 32 + ".raw")
    orphan.write_bytes(b"x" * 8192)
    assert main(["prune", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["DryRun"] is True and [i["Path"] for i in shown["Items"]] == [str(orphan)]
    assert orphan.exists()
    assert main(["prune", "--yes"]) == 0
    assert "Total reclaimed space" in capsys.readouterr().out
    assert not orphan.exists()


def test_df_and_prune_without_yes_leave_a_dead_processs_work(home: Path) -> None:
    """Each in a process of its own: every other command sweeps dead processes' work on its
    way in; these two only show it (and prune --yes removes it, as fsck --repair does)."""
    child = subprocess.Popen(["sleep", "60"])
    child.kill()
    child.wait()
    work = home / "work" / f"build-{child.pid}-0badf00d"
    work.mkdir(parents=True)
    env = {"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    assert run_amilab("df", env=env, check=True).returncode == 0
    shown = json.loads(run_amilab("prune", "--json", env=env, check=True).stdout)
    assert [i["Path"] for i in shown["Items"]] == [str(work)] and work.is_dir()
    run_amilab("prune", "--yes", env=env, check=True)
    assert not work.exists()


def test_bad_sizes_and_days_are_bad_input(home: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prune", "--keep-cache", "lots"]) == 2
    assert main(["prune", "--logs-older-than", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("amilab: --") for line in err)


def test_an_enospc_no_writer_translated_exits_3_with_one_line(
    home: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(home / "x"))

    monkeypatch.setattr(space, "disk_usage", full)  # a command whose write hit a full disk
    assert main(["df"]) == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("amilab: /") and "no space left on device (writing amilab df" in line
