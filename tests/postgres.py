"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries (scripts/setup.sh
installs them), a cluster made by initdb in a fresh directory, listening on a Unix socket
there only (no TCP port), trust authentication, stopped and removed afterwards. initdb
refuses to run as root, so as root the cluster belongs to the `postgres` user and its
commands run through `runuser`."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")) or (
        [shutil.which(tool)] if shutil.which(tool) else []
    )
    if not found:
        pytest.fail(f"{tool} is missing: install Debian's postgresql (scripts/setup.sh does)")
    return found[-1]


@contextmanager
def server() -> Iterator[str]:
    """A running server; yields its libpq URL (database `postgres` over the socket)."""
    # not under pytest's tmp_path: its parent is root's 0700 directory, which the postgres
    # user cannot enter
    top = Path(tempfile.mkdtemp(prefix="amilab-pg-"))
    data, sock = top / "data", top / "sock"
    sock.mkdir()
    as_user: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        pg = pwd.getpwnam("postgres")
        for p in (top, sock):
            os.chown(p, pg.pw_uid, pg.pw_gid)
        as_user, user = ["runuser", "-u", "postgres", "--"], "postgres"
    run = lambda *a: subprocess.run([*as_user, *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    got = run(
        _bin("initdb"), "-D", str(data), "--auth=trust", "-U", user, "--no-sync", "-E", "UTF8"
    )
    assert got.returncode == 0, got.stderr
    opts = f"-c listen_addresses='' -c unix_socket_directories={sock} -c fsync=off"
    got = run(_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(top / "log"), "-w", "start")
    assert got.returncode == 0, got.stderr + (top / "log").read_text(errors="replace")
    try:
        yield f"postgresql:///postgres?host={sock}&user={user}"
    finally:
        run(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(top, ignore_errors=True)
