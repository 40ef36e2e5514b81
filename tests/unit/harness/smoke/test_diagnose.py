"""Reading a boot failure from outside: the console's release, the disk's module trees."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.launch.machine import Disk
from harness.smoke.diagnose import booted_release, module_trees, modules_tree_from_outside
from tests.conftest import need

CONSOLE = "[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)\n"


def _disk(tmp_path: Path, trees: list[str], offset: int = 0) -> Path:
    root = tmp_path / "root"
    (root / "lib/modules").mkdir(parents=True)
    for t in trees:
        (root / "lib/modules" / t).mkdir()
    fs = tmp_path / "fs.img"
    mkfs = need("mkfs.ext4", "e2fsprogs")
    subprocess.run([mkfs, "-q", "-F", "-d", str(root), str(fs), "16M"], check=True)
    if not offset:
        return fs
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.write(b"\0" * offset)
        f.write(fs.read_bytes())
    return disk


def test_release_from_console() -> None:
    assert booted_release(CONSOLE) == "6.1.0-56-cloud-amd64"
    assert booted_release("nothing yet") is None


def test_trees_from_the_disk(tmp_path: Path) -> None:
    disk = _disk(tmp_path, ["6.1.0-55-cloud-amd64", "6.1.0-9-amd64"])
    assert module_trees(Disk(disk, "raw")) == ["6.1.0-55-cloud-amd64", "6.1.0-9-amd64"]
    assert module_trees(Disk(disk, "qcow2")) is None  # only raw is read this way


def test_partition_offset(tmp_path: Path) -> None:
    disk = _disk(tmp_path, ["6.1.0-56-cloud-amd64"], offset=1 << 20)
    assert module_trees(Disk(disk, "raw"), 1 << 20) == ["6.1.0-56-cloud-amd64"]


def test_verdict(tmp_path: Path) -> None:
    missing = modules_tree_from_outside(CONSOLE, Disk(_disk(tmp_path, []), "raw"), 0)
    assert missing is not None and not missing.passed
    assert "booted 6.1.0-56-cloud-amd64" in missing.detail
    assert "module trees in the image: none" in missing.detail
    (tmp_path / "ok").mkdir()
    present = modules_tree_from_outside(
        CONSOLE, Disk(_disk(tmp_path / "ok", ["6.1.0-56-cloud-amd64"]), "raw"), 0
    )
    assert present is not None and present.passed
