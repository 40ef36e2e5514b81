"""A guest's RAM and device state saved to a file and loaded back, over QMP: QEMU's own
migration, with a file at the other end instead of another QEMU.

QEMU 7.2 has no `file:` migration URI (it came in 8.2), so the stream goes through
`exec:` (QEMU runs the command with /bin/sh, its stdin or stdout being the stream). The
save is not live: the guest is paused first, so the stream is one pass over RAM that
nothing changes underneath, and a failure leaves a guest that `cont` resumes as it was.
The incoming side is started with the same command line plus `-incoming defer`, so QMP is
up before the stream is chosen; the saved run state is "paused" (the guest was paused when
it was saved), so QEMU waits for `cont`.

A state only loads into the same machine: same QEMU build and the same devices, which the
command line decides. `fingerprint` names that pair; the instance records it with the file
and a resume whose fingerprint differs boots cold instead of feeding QEMU a stream that
would fail (or worse, half-load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from builder.errors import AmilabError
from builder.state.workarea import fsync_file

INCOMING = ["-incoming", "defer"]
PARTIAL = ".partial"  # a save being written; renamed into place only once complete
# QEMU's default bandwidth cap (128 MiB/s) is for live migration over a shared network; a
# paused guest to a local file has no reason to wait
MAX_BANDWIDTH = 64 << 30
POLL = 0.02


class MigrationFailed(AmilabError):
    """A save or load that did not complete; the guest is as it was before (save) or not
    started (load)."""


def without_incoming(argv: list[str]) -> list[str]:
    """The command line as a cold boot runs it: `-incoming X` removed wherever it is."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "-incoming":
            skip = True
            continue
        out.append(arg)
    return out


def version_text(major: int, minor: int, micro: int, package: str = "") -> str:
    """One spelling of a QEMU build for QMP's query-version and `--version` alike."""
    package = package.strip().strip("()").strip()
    return f"{major}.{minor}.{micro}" + (f" ({package})" if package else "")


def version_from_qmp(reply: dict[str, Any]) -> str:
    q = reply["qemu"]
    return version_text(int(q["major"]), int(q["minor"]), int(q["micro"]), reply.get("package", ""))


_VERSION = re.compile(r"version (\d+)\.(\d+)\.(\d+)\s*(?:\((.*)\))?")


def parse_version_output(text: str) -> str | None:
    """`qemu-system-x86_64 --version`'s first line, as `version_text` spells it."""
    m = _VERSION.search(text.splitlines()[0] if text else "")
    if m is None:
        return None
    return version_text(int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4) or "")


def binary_version(engine: str) -> str | None:
    """The version of the QEMU a start would run (None: it does not say, or is missing)."""
    try:
        out = subprocess.run(
            [engine, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version_output(out.stdout)


def fingerprint(version: str, argv: list[str]) -> str:
    """What a saved state needs to load: the QEMU build and its command line (without the
    `-incoming` a resume adds)."""
    text = json.dumps({"qemu": version, "argv": without_incoming(argv)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(saved: list[str], now: list[str]) -> str:
    """A short account of how two command lines differ, for the note a cold boot leaves."""
    a, b = without_incoming(saved), without_incoming(now)
    gone = [x for x in a if x not in b]
    new = [x for x in b if x not in a]
    parts = []
    if gone:
        parts.append("no longer " + ", ".join(gone[:2]) + (" …" if len(gone) > 2 else ""))
    if new:
        parts.append("now " + ", ".join(new[:2]) + (" …" if len(new) > 2 else ""))
    return "; ".join(parts) or "argument order"


def _wait(mon: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = mon.cmd("query-migrate")
        status = info.get("status")
        if status == "completed":
            return dict(info)
        if status in ("failed", "cancelled"):
            raise MigrationFailed(f"{what} {status}: {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                mon.cmd("migrate_cancel")
            raise MigrationFailed(f"{what} did not complete within {timeout:.0f} s")
        time.sleep(POLL)


def save(mon: Any, dest: Path, timeout: float = 300.0) -> tuple[str, int]:
    """Pause the guest and write its RAM and device state to `dest` (complete or absent:
    written beside it, synced, then renamed). Returns (the QEMU version that wrote it, its
    size in bytes). The guest stays paused after a success, for the caller to record the
    state and then end QEMU, or `cont` if recording fails; after a failure it runs again and
    no file is left."""
    partial = dest.with_name(dest.name + PARTIAL)
    partial.unlink(missing_ok=True)
    was_running = bool(mon.cmd("query-status").get("running"))
    mon.cmd("stop")
    try:
        version = version_from_qmp(mon.cmd("query-version"))
        mon.cmd("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
        mon.cmd("migrate", uri="exec:cat > " + shlex.quote(str(partial)))
        _wait(mon, timeout, "saving the guest's state")
        fsync_file(partial)
        os.replace(partial, dest)
        fsync_file(dest.parent)
        return version, dest.stat().st_size
    except BaseException as e:
        partial.unlink(missing_ok=True)
        if was_running:
            with contextlib.suppress(Exception):  # the guest goes on as if nothing happened
                mon.cmd("cont")
        if isinstance(e, Exception) and not isinstance(e, MigrationFailed):
            why = f"{type(e).__name__}: {e}"
            raise MigrationFailed(f"saving the guest's state failed: {why}") from e
        raise


def load(mon: Any, src: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Feed a QEMU started with `INCOMING` the state in `src`, then let the guest run.
    Returns query-migrate's account of the load."""
    mon.cmd("migrate-incoming", uri="exec:cat " + shlex.quote(str(src)))
    info = _wait(mon, timeout, "loading the saved state")
    if not mon.cmd("query-status").get("running"):
        mon.cmd("cont")
    return info
