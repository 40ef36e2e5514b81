"""prune's plan: what no record references goes; what one names never does."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from builder.images.tables import JsonTable
from builder.state import prune
from builder.state.references import referenced

DIGEST = "cd" * 32


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AMILAB_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (home / "artifacts" / "cd").mkdir(parents=True)
    (home / "artifacts" / "ab").mkdir(parents=True)
    return home


def test_named_files_and_digests_stay_the_rest_goes(home: Path) -> None:
    named = home / "artifacts" / "ab" / ("ab" * 32 + ".raw")
    by_digest = home / "artifacts" / "cd" / f"{DIGEST}.raw"
    orphan = home / "artifacts" / "cd" / ("ef" * 32 + ".raw")
    for f in (named, by_digest, orphan):
        f.write_bytes(b"x" * 4096)
    JsonTable("snapshots", "snapshot").insert(
        "snap-1", {"SnapshotId": "snap-1", "Amilab": {"Path": str(named), "Digest": DIGEST}}
    )
    plan = prune.plan()
    assert [i.path for i in plan.items] == [orphan]
    assert referenced().covers(by_digest) and referenced().covers(named)
    assert orphan.exists()  # planning removes nothing
    assert prune.remove(plan) > 0
    assert not orphan.exists() and named.exists() and by_digest.exists()


def test_instances_logs_and_work(home: Path) -> None:
    JsonTable("instances", "instance").insert(
        "i-1", {"InstanceId": "i-1", "State": {"Name": "running"}}
    )
    JsonTable("instances", "instance").insert(
        "i-2", {"InstanceId": "i-2", "State": {"Name": "terminated"}}
    )
    for iid in ("i-1", "i-2"):
        (home / "instances" / iid).mkdir(parents=True)
    logs = home / "logs" / "instances"
    logs.mkdir(parents=True)
    old, recent = logs / "i-2.console.log", logs / "i-2.qemu.log"
    running_log = logs / "i-1.console.log"
    for f in (old, recent, running_log):
        f.write_text("boot\n")
    month = time.time() - 30 * 86400
    os.utime(old, (month, month))
    os.utime(running_log, (month, month))
    live = home / "work" / f"raw-{os.getpid()}-aaaa"
    live.mkdir(parents=True)
    gone = {i.path for i in prune.plan(logs_older_than=7).items}
    assert gone == {home / "instances" / "i-2", old}


def test_old_base_trees_and_the_cache_limit(home: Path, tmp_path: Path) -> None:
    rootfs = tmp_path / "cache" / "amilab" / "rootfs"
    rootfs.mkdir(parents=True)
    older, newer = rootfs / "bookworm-aaaa.tar", rootfs / "bookworm-bbbb.tar"
    other = rootfs / "trixie-cccc.tar"
    for i, f in enumerate((older, other, newer)):
        f.write_bytes(b"t" * 8192)
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    assert [i.path for i in prune.plan().items] == [older]
    everything = {i.path for i in prune.plan(keep_cache=0).items}
    assert everything == {older, newer, other}
    some = [i.path for i in prune.plan(keep_cache=9000).items]
    assert some == [older, other]  # least recently used first, until the rest fits


def test_parse_size() -> None:
    assert prune.parse_size("10G") == 10 << 30
    assert prune.parse_size("512M") == 512 << 20
    assert prune.parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert prune.parse_size("0") == 0
    with pytest.raises(ValueError):
        prune.parse_size("ten")


def test_a_record_naming_the_home_protects_nothing_by_it(home: Path) -> None:
    orphan = home / "artifacts" / "cd" / ("ef" * 32 + ".raw")
    orphan.write_bytes(b"x" * 4096)
    JsonTable("results_like", "row").insert("r-1", {"Home": str(home), "Root": "/"})
    assert [i.path for i in prune.plan().items] == [orphan]


def test_an_ended_instance_goes_though_its_record_names_its_folder(home: Path) -> None:
    folder = home / "instances" / "i-3"
    folder.mkdir(parents=True)
    JsonTable("instances", "instance").insert(
        "i-3",
        {
            "InstanceId": "i-3",
            "State": {"Name": "terminated"},
            "Amilab": {"Dir": str(folder)},
        },  # fmt: skip
    )
    assert [i.path for i in prune.plan().items] == [folder]


def test_a_volume_keeps_the_file_it_is_over(home: Path, tmp_path: Path) -> None:
    base = home / "artifacts" / "cd" / ("ee" * 32 + ".raw")
    base.write_bytes(b"\0" * 65536)
    vol = home / "volumes" / "vol-1.qcow2"
    vol.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(vol)], check=True)  # fmt: skip
    JsonTable("volumes", "volume").insert("vol-1", {"Amilab": {"Path": str(vol)}})
    assert prune.plan().items == []


def test_an_artifact_placed_while_a_command_works_is_spared(home: Path) -> None:
    """Placed first, registered a moment after: not an orphan while its writer works."""
    placed = home / "artifacts" / "cd" / ("ef" * 32 + ".raw")
    placed.write_bytes(b"x" * 4096)
    work = home / "work" / f"restore-{os.getpid()}-0123abcd"
    work.mkdir(parents=True)
    assert prune.plan().items == []
    work.rmdir()  # the command ended without registering it: now it is an orphan
    assert [i.path for i in prune.plan().items] == [placed]


def test_an_instance_folder_without_a_record_yet_is_spared_a_while(home: Path) -> None:
    folder = home / "instances" / "i-4"
    folder.mkdir(parents=True)
    assert prune.plan().items == []  # a launch makes its folder a moment before its record
    old = time.time() - 2 * prune.GRACE_S
    os.utime(folder, (old, old))
    assert [i.path for i in prune.plan().items] == [folder]
