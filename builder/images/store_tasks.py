"""Store tasks (CreateStoreImageTask's): a state (InProgress, Completed, Failed) and a
percentage, kept in the registry database so `amilab store-tasks` can show them from
elsewhere while a store runs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from builder import statedb
from builder.images.registry import Registry, now_iso
from builder.pids import pid_alive

TASK_HISTORY_DAYS = 31  # DescribeStoreImageTasks shows the last 31 days


@dataclass
class StoreTask:
    task_id: str
    image_id: str
    bucket: str
    object_key: str
    state: str = "InProgress"
    progress: int = 0
    start_time: str = ""
    end_time: str | None = None
    failure_reason: str | None = None
    pid: int = 0
    bytes_stored: int = 0

    def describe(self) -> dict[str, Any]:
        """The DescribeStoreImageTasks shape."""
        return {
            "AmiId": self.image_id,
            "TaskStartTime": self.start_time,
            "Bucket": self.bucket,
            "S3objectKey": self.object_key,
            "ObjectKey": self.object_key,
            "ProgressPercentage": self.progress,
            "StoreTaskState": self.state,
            "StoreTaskFailureReason": self.failure_reason,
        }

    def describe_stored(self) -> dict[str, Any]:
        """What `store` reports of its finished task: the task and the bytes it wrote."""
        return {**self.describe(), "Bytes": self.bytes_stored}


_TASKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_tasks (
    task_id TEXT PRIMARY KEY,
    start_time TEXT NOT NULL,
    task TEXT NOT NULL
)"""


class TaskLog:
    def __init__(self) -> None:
        self.path = Registry().path

    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with statedb.session(self.path, write=write) as conn:
            conn.execute(_TASKS_SCHEMA)  # not executescript: it would commit a transaction
            yield conn

    def save(self, task: StoreTask) -> None:
        with self._conn(write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO store_tasks VALUES (?, ?, ?)",
                (task.task_id, task.start_time, json.dumps(asdict(task))),
            )

    def recent(self, days: int = TASK_HISTORY_DAYS) -> list[StoreTask]:
        since = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S")
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT task FROM store_tasks WHERE start_time >= ? ORDER BY start_time, rowid",
                (since,),
            ).fetchall()
        tasks = [StoreTask(**json.loads(r[0])) for r in rows]
        for t in tasks:  # a store whose process is gone will never finish
            if t.state == "InProgress" and not pid_alive(t.pid):
                t.state, t.failure_reason = "Failed", "the storing process ended early"
                t.end_time = t.end_time or now_iso()
                self.save(t)
        return tasks
