"""builder/disk/e2fs.py on real ext4 filesystems made by mkfs.ext4 (no VM, a second or so):
a merged-/usr root at an offset in a file (a partition), trees written through the /lib link
the way the guest resolves it, e2fsck's verdict, and what debugfs must not be given."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.disk import e2fs
from builder.errors import BuildFailed
from tests.conftest import need

OFFSET = 1 << 20


def _image(tmp: Path, root: Path, offset: int = OFFSET) -> Path:
    need("mkfs.ext4", "e2fsprogs")
    disk = tmp / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(offset + (64 << 20))
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={offset}", "-d", str(root), str(disk), "64M"],
        check=True, capture_output=True,
    )  # fmt: skip
    return disk


def _merged_usr(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "usr/lib/modules/6.1.0-old").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "etc").mkdir()
    (root / "etc/abs").symlink_to("/usr/lib")  # an absolute link
    return root


def _tree(tmp: Path) -> Path:
    tree = tmp / "host/7.0-new"
    (tree / "kernel/fs/isofs").mkdir(parents=True)
    (tree / "kernel/fs/isofs/isofs.ko.xz").write_bytes(os.urandom(5000))
    (tree / "modules.dep").write_text("kernel/fs/isofs/isofs.ko.xz:\n")
    (tree / "private").mkdir(mode=0o700)
    (tree / "private").chmod(0o700)
    (tree / "build").symlink_to("/usr/src/linux-headers-7.0-new")
    return tree


def _ls(disk: Path, path: str) -> str:
    r = subprocess.run(["debugfs", "-R", f"ls -l {path}", f"{disk}?offset={OFFSET}"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return r.stdout


def test_resolve_follows_links_as_the_guest_does(tmp_path: Path) -> None:
    fs = e2fs.open_fs(_image(tmp_path, _merged_usr(tmp_path)), OFFSET)
    assert fs is not None
    assert fs.resolve("/lib/modules/7.0-new") == "/usr/lib/modules/7.0-new"
    assert fs.resolve("/etc/abs/modules") == "/usr/lib/modules"
    assert fs.resolve("/lib/../boot/x") == "/usr/boot/x"  # `..` after a link: its target's
    assert fs.lookup("/lib") == e2fs.Entry("symlink", "usr/lib")
    assert fs.lookup("/nothing") is None


def test_tree_written_through_the_link_and_checked(tmp_path: Path) -> None:
    disk = _image(tmp_path, _merged_usr(tmp_path))
    fs = e2fs.open_fs(disk, OFFSET)
    assert fs is not None
    tree = _tree(tmp_path)
    dest = fs.resolve("/lib/modules/7.0-new")
    config = tmp_path / "config"
    config.write_text("CONFIG_X=y\n")
    fs.run([*fs.tree_commands(tree, dest), *fs.file_commands(config, "/boot/config-7.0-new")])
    listing = _ls(disk, "/usr/lib/modules/7.0-new")
    assert "modules.dep" in listing and "build" in listing
    assert " 40700 " in listing  # a directory's mode as on the host
    out = tmp_path / "back.ko.xz"
    module = "/usr/lib/modules/7.0-new/kernel/fs/isofs/isofs.ko.xz"
    subprocess.run(["debugfs", "-R", f"dump {module} {out}", f"{disk}?offset={OFFSET}"],
                   check=True, capture_output=True)  # fmt: skip
    assert out.read_bytes() == (tree / "kernel/fs/isofs/isofs.ko.xz").read_bytes()
    isofs = _ls(disk, "/usr/lib/modules/7.0-new/kernel/fs/isofs")
    assert " 0      0 " in isofs.replace("(1)", "")  # owned by root
    assert fs.lookup("/usr/lib/modules/7.0-new/build") == e2fs.Entry(
        "symlink", "/usr/src/linux-headers-7.0-new"
    )
    assert fs.read_text("/boot/config-7.0-new") == "CONFIG_X=y\n"
    # a second write of a file replaces it
    config.write_text("CONFIG_X=m\n")
    fs.run(fs.file_commands(config, "/boot/config-7.0-new"))
    assert fs.read_text("/boot/config-7.0-new") == "CONFIG_X=m\n"


def test_mkdir_commands_make_missing_parents_only(tmp_path: Path) -> None:
    fs = e2fs.open_fs(_image(tmp_path, _merged_usr(tmp_path)), OFFSET)
    assert fs is not None
    assert fs.mkdir_commands("/usr/lib/modules") == []
    assert fs.mkdir_commands("/boot/grub/x") == ['mkdir "/boot/grub"', 'mkdir "/boot/grub/x"']
    with pytest.raises(BuildFailed, match="not a directory"):
        fs.mkdir_commands("/lib/x")  # /lib is a link: the caller must resolve first


def test_debugfs_errors_are_failures(tmp_path: Path) -> None:
    """debugfs exits 0 after a failed command; its stderr is what tells."""
    fs = e2fs.open_fs(_image(tmp_path, _merged_usr(tmp_path)), OFFSET)
    assert fs is not None
    with pytest.raises(BuildFailed, match="debugfs on .*"):
        fs.run(['mkdir "/usr/lib/modules/6.1.0-old"'])  # already there


def test_names_debugfs_cannot_quote_are_unsupported(tmp_path: Path) -> None:
    fs = e2fs.open_fs(_image(tmp_path, _merged_usr(tmp_path)), OFFSET)
    assert fs is not None
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / 'a"b').write_text("x")
    with pytest.raises(e2fs.Unsupported):
        fs.tree_commands(tree, "/usr/lib/modules/t")


def test_what_e2fsprogs_cannot_take_is_left_to_libguestfs(tmp_path: Path) -> None:
    other = tmp_path / "random.raw"
    other.write_bytes(os.urandom(1 << 20))
    assert e2fs.open_fs(other) is None  # no ext2/3/4 superblock there
    disk = _image(tmp_path, _merged_usr(tmp_path))
    assert e2fs.open_fs(disk, 0) is None  # the filesystem starts at OFFSET, not 0
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", f"{disk}?offset={OFFSET}"],
                   check=True, capture_output=True)  # fmt: skip
    assert e2fs.open_fs(disk, OFFSET) is None  # a journal to replay first


def test_e2fsck_findings_fail_the_run(tmp_path: Path) -> None:
    """What the module guards against: debugfs's mkdir through a symlink breaks the tree."""
    fs = e2fs.open_fs(_image(tmp_path, _merged_usr(tmp_path)), OFFSET)
    assert fs is not None
    with pytest.raises(BuildFailed):
        fs.run(['mkdir "/lib/modules"'])
