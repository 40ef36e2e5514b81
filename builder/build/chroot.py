"""Run commands inside an image root with /proc, /sys, /dev mounted — mounts that cannot leak.

Every command runs in its own mount and PID namespace (`unshare`), and the mounts are made
inside it. When the command ends — normally, by failure, by Ctrl-C, or because amilab itself
was killed (`--kill-child`) — the namespace and every mount in it disappear with it, so no
`umount` step can be forgotten and nothing is left on the host.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from builder.children import ending_with_us
from builder.errors import EnvironmentProblem

_MOUNT_SCRIPT = r"""
set -e
r="$AMILAB_CHROOT"
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount -t devtmpfs devtmpfs "$r/dev" 2>/dev/null || mount --rbind /dev "$r/dev"
mkdir -p "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$r/dev/pts" 2>/dev/null || true
mount -t tmpfs tmpfs "$r/dev/shm"
mount -t tmpfs tmpfs "$r/run"
unset AMILAB_CHROOT
exec chroot "$r" "$@"
"""

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "TERM": "dumb",
}

_POLICY_RC = "#!/bin/sh\n# amilab: no daemons start while the image is being built\nexit 101\n"


def _unshare() -> str:
    path = shutil.which("unshare")
    if not path:
        raise EnvironmentProblem("unshare (util-linux) is missing")
    return path


def chroot_argv(root: Path, argv: list[str]) -> list[str]:
    """unshare ended with amilab (builder/children.py) and, by --kill-child, the namespace
    with it."""
    return ending_with_us(
        [
            _unshare(),
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            _MOUNT_SCRIPT,
            "amilab-chroot",
            *argv,
        ]
    )


def run(
    root: Path,
    argv: list[str],
    env: dict[str, str] | None = None,
    log: Path | None = None,
    cwd: str = "/",
) -> subprocess.CompletedProcess[bytes]:
    """Run argv inside `root`; output goes to `log` (appended) or is captured."""
    full_env = {**BASE_ENV, **(env or {}), "AMILAB_CHROOT": str(root)}
    out = open(log, "ab") if log else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.run(
            chroot_argv(root, argv),
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            check=False,
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def prepared(root: Path) -> Iterator[None]:
    """Make the root usable for package tools during the build and undo it afterwards:
    a policy-rc.d that stops daemons from starting, and the host's resolv.conf."""
    policy = root / "usr/sbin/policy-rc.d"
    resolv = root / "etc/resolv.conf"
    saved_resolv: bytes | None = None
    resolv_was_link = resolv.is_symlink()
    link_target = os.readlink(resolv) if resolv_was_link else None
    if resolv.exists() and not resolv_was_link:
        saved_resolv = resolv.read_bytes()
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text(_POLICY_RC)
    policy.chmod(0o755)
    if resolv_was_link:
        resolv.unlink()
    if Path("/etc/resolv.conf").exists():
        shutil.copyfile("/etc/resolv.conf", resolv)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)
        if resolv.exists() or resolv.is_symlink():
            resolv.unlink()
        if link_target is not None:
            os.symlink(link_target, resolv)
        elif saved_resolv is not None:
            resolv.write_bytes(saved_resolv)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this (the host's) mount namespace."""
    target = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == target or mnt.startswith(target + "/"):
                found.append(mnt)
    return found


def remove_tree(path: Path) -> None:
    """Delete a work directory, refusing to descend into anything still mounted there."""
    if not path.exists():
        return
    if left := mounts_under(path):
        raise EnvironmentProblem(f"refusing to delete {path}: still mounted: {', '.join(left)}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def ignore_sigint() -> None:
    """preexec_fn for helpers that must finish their own cleanup after Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
