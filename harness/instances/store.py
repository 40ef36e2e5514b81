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
from builder.pids import process_start as process_start  # callers use it from here
from builder.pids import same_process as same_process

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
    StateReason (code, message), kept until the next change without one. Terminated is
    final, as on EC2: a supervisor that learns of it late (its launch's process died before
    recording it, and `reconcile` ended the instance) cannot bring it back."""
    if record.get("State", {}).get("Name") == "terminated" and name != "terminated":
        return
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
