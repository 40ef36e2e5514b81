"""Records that take time go through EC2's `pending` and carry their owner (PID and start
time); a record whose owner is gone is found here and failed with a reason, never left
pending. The check is cheap (one connection, one indexed-free query per table, only the
pending rows parsed), so every command that opens the registry runs it once at start.

Which rows are pending, and how each ends when its process died:
- a snapshot `pending` → `error` (EC2's SnapshotState) with a StateMessage;
- a volume `creating` → `error`;
- an image `pending` → `failed` with EC2's StateReason;
- a store task `InProgress` → `Failed` with its failure reason.
The artifact such a process may have placed before it died is named by no record, so fsck
quarantines it; nothing a completed record names is touched.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from builder import paths, statedb
from builder.errors import AmilabError
from builder.images.records import ImageRecord, now_iso
from builder.images.registry import Registry
from builder.images.tables import JsonTable, Row
from builder.pids import pid_alive, process_start, same_process
from builder.state import workarea

REASON = "the process that owned it ended before it finished"


def owner() -> dict[str, int]:
    """This process, as a pending record names its owner."""
    pid = os.getpid()
    return {"Pid": pid, "Start": process_start(pid) or 0}


def hold(rec: ImageRecord) -> ImageRecord:
    """`rec` made a pending image owned by this process, to be registered so (EC2 shows a
    CreateImage's or CopyImage's AMI pending at once) and then ended by `image_done` or
    `image_failed`; if this process dies first, the next start fails it."""
    rec.state = "pending"
    rec.extra["owner"] = owner()
    return rec


def image_done(image_id: str, change: Callable[[ImageRecord], None] | None = None) -> ImageRecord:
    """The pending image made available (after `change`, in the same transaction)."""

    def done(r: ImageRecord) -> None:
        if r.state != "pending":
            raise AmilabError(f"{image_id} is {r.state}, no longer pending")
        if change:
            change(r)
        r.state = "available"
        r.extra.pop("owner", None)

    return Registry().update(image_id, done)


def image_failed(image_id: str, why: str, code: str = "Server.InternalError") -> bool:
    """The pending image ended failed with EC2's StateReason; False if it was not pending
    (deregistered meanwhile, or ended already)."""
    changed = False

    def change(r: ImageRecord) -> None:
        nonlocal changed
        if r.state == "pending":
            changed = True
            r.state = "failed"
            r.extra["state_reason"] = {"Code": code, "Message": why}
            r.extra.pop("owner", None)

    try:
        Registry().update(image_id, change)
    except (AmilabError, sqlite3.Error):
        return False  # else its owner's death fails it at the next start
    return changed


def owner_alive(who: dict[str, Any] | None) -> bool:
    if not who:
        return False  # pending without an owner: written by an amilab without owners
    return same_process(who.get("Pid"), who.get("Start") or None)


@dataclass
class Stale:
    """A pending record whose process is gone."""

    kind: str  # snapshot | volume | image | store-task
    table: str
    key: str
    state: str
    owner: dict[str, Any] | None

    @property
    def detail(self) -> str:
        who = f"process {self.owner.get('Pid')}" if self.owner else "no recorded process"
        return f"{self.kind} {self.key} is {self.state}, owned by {who}, which is gone"


@dataclass(frozen=True)
class _Kind:
    kind: str
    table: str
    key_column: str
    record_column: str
    state_path: str  # JSON path of the state in the row
    pending: str
    owner_of: Callable[[Row], dict[str, Any] | None]


def _amilab_owner(row: Row) -> dict[str, Any] | None:
    return (row.get("Amilab") or {}).get("Owner")


def _task_owner(row: Row) -> dict[str, Any] | None:
    pid = row.get("pid")
    # a store task knows only its PID: alive means "that PID exists"
    return {"Pid": pid, "Start": None, "PidOnly": True} if pid else None


_KINDS = (
    _Kind("snapshot", "snapshots", "id", "record", "$.State", "pending", _amilab_owner),
    _Kind("volume", "volumes", "id", "record", "$.State", "creating", _amilab_owner),
    _Kind("image", "images", "image_id", "record", "$.state", "pending",
          lambda row: (row.get("extra") or {}).get("owner")),
    _Kind("store-task", "store_tasks", "task_id", "task", "$.state", "InProgress", _task_owner),
)  # fmt: skip


def _alive(who: dict[str, Any] | None) -> bool:
    if who and who.get("PidOnly"):
        return pid_alive(int(who["Pid"]))
    return owner_alive(who)


def stale() -> list[Stale]:
    """Pending records of every kind whose owner is gone."""
    path = paths.amilab_home() / "registry.sqlite"
    if not path.exists():
        return []
    found = []
    with closing(statedb.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for k in _KINDS:
            if k.table not in tables:
                continue
            rows = conn.execute(
                f"SELECT {k.key_column}, {k.record_column} FROM {k.table} "
                f"WHERE json_extract({k.record_column}, ?) = ?",
                (k.state_path, k.pending),
            ).fetchall()
            for key, text in rows:
                who = k.owner_of(json.loads(text))
                if not _alive(who):
                    found.append(Stale(k.kind, k.table, key, k.pending, who))
    return found


def fail(item: Stale) -> bool:
    """End one stale record as failed, if it is still pending (another process may have
    failed it a moment ago); True when this call changed it."""
    changed = False

    def still(state: str) -> bool:
        nonlocal changed
        changed = state == item.state
        return changed

    if item.kind in ("snapshot", "volume"):

        def change(row: Row) -> None:
            if still(row["State"]):
                row["State"] = "error"
                row["StateMessage"] = REASON
                row.setdefault("Amilab", {}).pop("Owner", None)

        JsonTable(item.table, item.kind).update(item.key, change)
    elif item.kind == "image":
        changed = image_failed(item.key, REASON)
    else:
        _fail_task(item.key, still)
    return changed


def _fail_task(task_id: str, still: Callable[[str], bool]) -> None:
    with closing(statedb.connect(Registry().path)) as conn, conn:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT task FROM store_tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            return
        task = json.loads(row[0])
        if still(task["state"]):
            task["state"], task["failure_reason"] = "Failed", REASON
            task["end_time"] = task.get("end_time") or now_iso()
            conn.execute(
                "UPDATE store_tasks SET task = ? WHERE task_id = ?", (json.dumps(task), task_id)
            )


def recover() -> list[Stale]:
    """Fail every stale pending record; what was failed by this call."""
    return [item for item in stale() if fail(item)]


_recovered = False


def recover_at_start() -> None:
    """Once per process: fail what dead processes left pending and sweep their work area
    leftovers. Every command that uses the registry calls this on its way in (the CLI's
    dispatch, the API server's start)."""
    global _recovered
    if _recovered:
        return
    _recovered = True
    try:
        recover()
        workarea.sweep()
    except sqlite3.Error:
        pass  # a registry this cannot read is fsck's to report, not every command's to die of
