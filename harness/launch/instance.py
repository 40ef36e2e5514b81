"""Instances: one boot of an AMI, with an `i-` ID and a work directory of its own.

`$AMILAB_HOME/instances/i-…/` holds what only this boot needs (key pair, metadata document,
QMP socket, the disk's temporary overlay) and goes away with the instance unless kept. The
console and QEMU logs go to `$AMILAB_HOME/logs/instances/` so that a report can point at
them after the instance is gone. A harness killed with SIGKILL cannot clean up, so each
directory records its owner's PID and the next launch removes directories whose owner died.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from builder import paths
from builder.ids import random_id
from builder.pids import pid_alive

OWNER_FILE = "owner.pid"


def instances_root() -> Path:
    return paths.amilab_home() / "instances"


def instance_logs() -> Path:
    return paths.logs_dir() / "instances"


@dataclass
class InstanceDir:
    instance_id: str
    path: Path

    @property
    def console_log(self) -> Path:
        return instance_logs() / f"{self.instance_id}.console.log"

    @property
    def qemu_log(self) -> Path:
        return instance_logs() / f"{self.instance_id}.qemu.log"

    @property
    def metadata_doc(self) -> Path:
        return self.path / "metadata.marshal"

    @property
    def qmp_socket(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def console_socket(self) -> Path:
        return self.path / "console.sock"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def reap_stale() -> list[str]:
    """Remove instance directories whose harness is gone; returns their IDs."""
    removed = []
    root = instances_root()
    if not root.is_dir():
        return removed
    for d in root.iterdir():
        try:
            pid = int((d / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        if not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def create() -> InstanceDir:
    reap_stale()
    instance_logs().mkdir(parents=True, exist_ok=True)
    root = instances_root()
    root.mkdir(parents=True, exist_ok=True)
    while True:
        iid = random_id("i")
        path = root / iid
        try:
            path.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    (path / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return InstanceDir(iid, path)
