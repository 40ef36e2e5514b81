"""Reproducible disks: one epoch for every time, identifiers from the recipe, real mkfs."""

from __future__ import annotations

import gzip
import os
import subprocess
import time
from pathlib import Path

import pytest

from builder.build import layout, reproducible
from builder.disk.formats import FORMATS
from builder.errors import BadInput
from tests.conftest import need

EPOCH = 1_700_000_000
UUID = "0f6a9b2e-1c33-4a7e-9d52-6a1f3c2b8e10"


def tree(root: Path) -> Path:
    (root / "usr/share/doc/pkg-a").mkdir(parents=True)
    (root / "usr/share/doc/pkg-b").mkdir(parents=True)
    (root / "etc").mkdir()
    for name, when in (("pkg-a", EPOCH - 500), ("pkg-b", EPOCH)):
        log = root / "usr/share/doc" / name / "changelog.Debian.gz"
        log.write_bytes(gzip.compress(b"x", mtime=0))
        os.utime(log, (when, when))
    (root / "etc/shadow").write_text("root:*:20417:0:99999:7:::\nnobody:*::0:99999:7:::\n")
    (root / "var/log/apt").mkdir(parents=True)
    (root / "var/log/dpkg.log").write_text(time.ctime())
    (root / "var/log/apt/history.log").write_text(time.ctime())
    (root / "etc/link").symlink_to("shadow")
    (root / "etc/iscsi").mkdir()
    (root / "etc/iscsi/initiatorname.iscsi").write_text("InitiatorName=iqn.1993-08.x:01:y\n")
    return root


def test_epoch_is_the_newest_changelog_unless_source_date_epoch_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path / "root")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert reproducible.build_epoch(root) == EPOCH
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert reproducible.build_epoch(root) == 1234
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BadInput, match="SOURCE_DATE_EPOCH"):
        reproducible.build_epoch(root)


def test_normalise_drops_logs_dates_shadow_and_clamps_every_time(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    old = root / "usr/share/doc/pkg-a/changelog.Debian.gz"
    reproducible.normalise_tree(root, EPOCH)
    assert not (root / "var/log/dpkg.log").exists()
    assert not (root / "var/log/apt/history.log").exists()
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            st = os.lstat(os.path.join(directory, name))
            assert st.st_mtime <= EPOCH, name
            if name != "link":  # following a link (os.walk's is_dir) reads it: atime changes
                assert st.st_atime == st.st_mtime, name
    assert os.lstat(old).st_mtime == EPOCH - 500  # older package times are kept
    assert os.lstat(root).st_mtime == EPOCH
    assert "GenerateName=yes" in (root / "etc/iscsi/initiatorname.iscsi").read_text()
    assert (root / "etc/shadow").read_text() == (
        f"root:*:{EPOCH // 86400}:0:99999:7:::\nnobody:*::0:99999:7:::\n"
    )


def test_two_disks_of_one_tree_made_at_different_times_are_identical(tmp_path: Path) -> None:
    need("mkfs.ext4", "e2fsprogs")
    need("debugfs", "e2fsprogs")
    need("sfdisk", "fdisk")
    disks = []
    for n in (1, 2):
        root = tree(tmp_path / f"root{n}")
        (root / "etc/hostname").write_text("x\n")  # written now, at another second each time
        reproducible.normalise_tree(root, EPOCH)
        out = tmp_path / f"disk{n}.raw"
        made = layout.make_disk(
            root, out, 64 << 20, "root", UUID, "gpt", tmp_path / "log", boot="bios", epoch=EPOCH
        )
        disks.append(out)
        if n == 1:
            time.sleep(1.1)
    assert disks[0].read_bytes() == disks[1].read_bytes()
    stat = subprocess.run(
        ["debugfs", "-R", "stat /etc/hostname", f"{disks[0]}?offset={made.fs_offset}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert stat.count(f"0x{EPOCH:x}:") >= 4, stat  # ctime, atime, mtime, crtime
    table = subprocess.run(["sfdisk", "--json", str(disks[0])], capture_output=True, text=True)
    disk_id, parts = layout.table_ids(UUID, ["bios", "root"])
    assert disk_id.upper() in table.stdout and parts["root"].upper() in table.stdout


def test_vmdk_written_twice_is_identical(tmp_path: Path) -> None:
    need("qemu-img", "qemu-utils")
    raw = tmp_path / "d.raw"
    raw.write_bytes(os.urandom(1 << 20))
    outs = []
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        outs.append(tmp_path / str(n) / "disk.vmdk")
        FORMATS["vmdk"].write(raw, outs[-1])
    assert outs[0].read_bytes() == outs[1].read_bytes()
    check = subprocess.run(["qemu-img", "check", str(outs[0])], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
