"""What the records reference, and the orphans fsck and prune both derive from it: on a real
AMILAB_HOME with real files, a real registry, real qcow2 overlays (qemu-img) and owners that
are real processes (a killed and reaped child is a dead owner, this test's process a live
one)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.images.tables import JsonTable
from builder.pids import process_start
from builder.state import fsck, prune, workarea
from builder.state.references import referenced

A, B = "ab" * 32, "cd" * 32


@pytest.fixture
def home(amilab_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for d in (A, B):
        (amilab_home / "artifacts" / d[:2]).mkdir(parents=True)
    return amilab_home


def _artifact(home: Path, digest: str, suffix: str = ".raw", name: str = "") -> Path:
    path = home / "artifacts" / digest[:2] / (name or f"{digest}{suffix}")
    path.write_bytes(b"x" * 4096)
    return path


def _dead_pid() -> tuple[int, int]:
    child = subprocess.Popen(["sleep", "60"])
    start = process_start(child.pid) or 0
    child.kill()
    child.wait()
    return child.pid, start


def _instance(iid: str, state: str, amilab: dict[str, object]) -> None:
    JsonTable("instances", "instance").insert(
        iid, {"InstanceId": iid, "State": {"Name": state}, "Amilab": amilab}
    )


def _set_state(iid: str, state: str) -> None:
    def change(r: dict[str, object]) -> None:
        r["State"] = {"Name": state}

    JsonTable("instances", "instance").update(iid, change)


def _orphans() -> tuple[set[Path], set[Path]]:
    """The orphans fsck reports and the unreferenced files prune would remove."""
    by_fsck = {Path(f.path) for f in fsck.check().findings if f.kind == "OrphanArtifact"}
    by_prune = {i.path for i in prune.plan().items if i.kind in ("Unreferenced", "Volumes")}
    return by_fsck, by_prune


def test_a_deregistered_images_files_stay_referenced_while_its_instance_runs(
    home: Path,
) -> None:
    disk = _artifact(home, A)
    kernel = _artifact(home, B, ".vmlinuz")
    launched = {"ami-1": {"image_id": "ami-1", "locations": {"raw": str(disk)}, "digest": A},
                "aki-1": {"image_id": "aki-1", "digest": B}}  # fmt: skip
    _instance("i-1", "running", {"LaunchImages": launched})
    refs = referenced()
    assert refs.owner(disk) == "i-1" and refs.owner(kernel) == "i-1"
    assert _orphans() == (set(), set())
    _set_state("i-1", "terminated")
    assert not referenced().covers(disk) and not referenced().covers(kernel)
    assert _orphans() == ({disk, kernel}, {disk, kernel})


def test_a_live_instances_overlay_keeps_its_backing_file(home: Path) -> None:
    base = _artifact(home, A)
    directory = home / "instances" / "i-2"
    directory.mkdir(parents=True)
    overlay = directory / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(overlay)], check=True)  # fmt: skip
    _instance("i-2", "running", {})
    assert referenced().owner(base) == "i-2"
    assert _orphans() == (set(), set())
    (directory / "owner.pid").write_text(f"{os.getpid()}\n")
    _set_state("i-2", "terminated")
    assert referenced().covers(base)  # its process still runs: the disk is in use
    (directory / "owner.pid").write_text(f"{_dead_pid()[0]}\n")
    assert not referenced().covers(base)
    assert _orphans() == ({base}, {base})
    assert directory in {i.path for i in prune.plan().items}


def test_fsck_and_prune_agree_on_what_is_an_orphan(home: Path) -> None:
    JsonTable("snapshots", "snapshot").insert(
        "snap-1", {"SnapshotId": "snap-1", "State": "completed", "Amilab": {"Digest": A}}
    )
    kept = _artifact(home, A)  # stored under a digest a record names
    pid, start = _dead_pid()
    half = _artifact(home, A, name=f"{A}.raw.tmp{pid}")  # a copy its dead process left
    copying = _artifact(home, A, name=f"{A}.qcow2.tmp{os.getpid()}")  # ours: still copying
    unnamed = _artifact(home, B)
    assert _orphans() == ({half, unnamed}, {half, unnamed})
    # a live process's work entry: what is placed after it started may be named a moment later
    work = workarea.new_dir("build")
    assert _orphans() == (set(), set())
    dead = workarea.root() / f"build@{pid}.{start}.abcdefgh"
    dead.mkdir()
    left = {Path(f.path) for f in fsck.check().findings if f.kind == "WorkLeftover"}
    assert left == {dead}
    assert {i.path for i in prune.plan().items if i.kind == "Work area"} == {dead}
    work.rmdir()
    assert prune.remove(prune.plan()) > 0
    assert not dead.exists() and not half.exists() and not unnamed.exists()
    assert kept.exists() and copying.exists()
    assert _orphans() == (set(), set())  # (the made-up bytes do not match their digest)
