"""Why a guest never let us in, from outside it: the console and the disk, read-only.

An image whose /lib/modules lacks the booted kernel's tree often cannot even load its NIC
driver, so no SSH check can run and report the mismatch. The console still says which kernel
booted, and the image's disk (raw, read with debugfs without mounting) still says which module
trees it has: enough for the same `modules-tree` verdict the in-guest check gives.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from harness.launch.machine import Disk
from harness.smoke.checks import CheckResult, modules_tree_result

_LINUX_VERSION = re.compile(r"Linux version (\S+)")


def booted_release(console: str) -> str | None:
    m = _LINUX_VERSION.search(console)
    return m.group(1) if m else None


def module_trees(disk: Disk, fs_offset: int = 0) -> list[str] | None:
    """The names under /lib/modules in the image's root filesystem; None when it cannot be
    read this way (not raw, no debugfs, not ext*)."""
    if disk.format != "raw" or not shutil.which("debugfs"):
        return None
    target = f"{disk.path}?offset={fs_offset}" if fs_offset else str(disk.path)
    try:
        out = subprocess.run(
            ["debugfs", "-R", "ls -p /lib/modules", target],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or "Bad magic number" in out.stderr:
        return None
    if "File not found" in out.stderr or "not found" in out.stdout:
        return []
    # `ls -p` lines: /inode/mode/uid/gid/name/size/
    names = [
        line.strip("/").split("/")[4] for line in out.stdout.splitlines() if line.count("/") >= 6
    ]
    return sorted(n for n in names if n not in (".", ".."))


def modules_tree_from_outside(console: str, disk: Disk, fs_offset: int) -> CheckResult | None:
    """The `modules-tree` verdict without a login, when both facts can be read."""
    release = booted_release(console)
    trees = module_trees(disk, fs_offset)
    if release is None or trees is None:
        return None
    return modules_tree_result(
        release,
        release in trees,
        trees,
        "read from the disk",
        "the guest never let us log in, e.g. because its NIC driver is a module of that "
        "missing tree",
    )
