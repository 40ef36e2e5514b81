"""Full filesystems: ENOSPC/EDQUOT (errno or a tool's message) become DiskFull, exit 3."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from builder.errors import DiskFull
from builder.state import diskfull


def test_enospc_names_the_mount_point_and_what_was_written(tmp_path: Path) -> None:
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a"))
    full = diskfull.from_exception(e, None, "artifact x.raw")
    assert isinstance(full, DiskFull) and full.exit_code == 3
    mount = str(diskfull.mount_point(tmp_path))
    assert str(full) == f"{mount}: no space left on device (writing artifact x.raw)"


def test_edquot_and_a_tools_message_are_full_too(tmp_path: Path) -> None:
    quota = diskfull.from_exception(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path, "w")
    assert quota is not None and "disk quota exceeded" in str(quota)
    tool = subprocess.CalledProcessError(
        1, ["qemu-img"], stderr=b"qemu-img: error while writing: No space left on device"
    )
    assert diskfull.from_exception(tool, tmp_path, "w") is not None


def test_other_errors_are_not_full(tmp_path: Path) -> None:
    assert (
        diskfull.from_exception(OSError(errno.EACCES, "Permission denied"), tmp_path, "w") is None
    )
    assert diskfull.from_exception(ValueError("bad"), tmp_path, "w") is None


def test_writing_translates_and_lets_others_through(tmp_path: Path) -> None:
    what = "the thing"
    with pytest.raises(DiskFull, match="writing the thing"), diskfull.writing(tmp_path, what):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PermissionError), diskfull.writing(tmp_path, "the thing"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_require_space_refuses_more_than_is_free(tmp_path: Path) -> None:
    free = diskfull.free_bytes(tmp_path)
    diskfull.require_space(tmp_path, 1, "a little")
    with pytest.raises(DiskFull, match=r"not enough space: needs .* free \(writing a lot\)"):
        diskfull.require_space(tmp_path, free + 1, "a lot")


def test_mount_point_of_a_path_not_yet_made(tmp_path: Path) -> None:
    assert diskfull.mount_point(tmp_path / "not" / "yet") == diskfull.mount_point(tmp_path)
