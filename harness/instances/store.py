"""Instances and key pairs as registry records, their EC2 states, and the per-instance lock.

An instance's record is its `describe-instances` shape plus amilab's own bookkeeping under
`Amilab` (never shown): its directory, the supervisor's PID and start time, the QEMU PIDs,
and the launch settings a start replays. States are EC2's, with their codes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import BadInput
from builder.images.tables import JsonTable, Row

STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
# states in which a supervisor should be alive behind the instance
SUPERVISED = ("pending", "running", "stopping", "shutting-down")
# EC2's StateReason codes and messages
USER_SHUTDOWN = (
    "Client.UserInitiatedShutdown",
    "Client.UserInitiatedShutdown: User initiated shutdown",
)
GUEST_SHUTDOWN = (
    "Client.InstanceInitiatedShutdown",
    "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
)


def instances() -> JsonTable:
    return JsonTable("instances", "instance")


def key_pairs() -> JsonTable:
    return JsonTable("key_pairs", "key pair")


def state(name: str) -> dict[str, Any]:
    return {"Code": STATE_CODES[name], "Name": name}


def set_state(record: Row, name: str, reason: tuple[str, str] | None = None) -> None:
    """Change a record's state (in a `JsonTable.update` callback); `reason` is EC2's
    StateReason (code, message), kept until the next change without one."""
    record["State"] = state(name)
    if reason is not None:
        record["StateReason"] = {"Code": reason[0], "Message": reason[1]}
        record["StateTransitionReason"] = reason[1]
    elif name in ("pending", "running"):
        record.pop("StateReason", None)
        record["StateTransitionReason"] = ""


def find(instance_id: str) -> Row:
    if not instance_id.startswith("i-"):
        raise BadInput(f'InvalidInstanceID.Malformed: Invalid id: "{instance_id}"')
    row = instances().get(instance_id)
    if row is None:
        raise BadInput(
            f"InvalidInstanceID.NotFound: The instance ID '{instance_id}' does not exist"
        )
    return row


def instances_dir() -> Path:
    return paths.amilab_home() / "instances"


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock held across processes: one instance's commands run one at a time,
    and address allocation is one step."""
    d = instances_dir()
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot), which with the PID names one process
    for good: a PID reused by another process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def same_process(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    now = process_start(pid)
    if now is None:
        return False
    try:  # a zombie (exited, not yet reaped) is no longer running anything
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return start is None or now == start
