"""An ordered, bounded parallel map on threads.

The work items here (inflate or deflate a batch of grains, pread/pwrite) run in C code
that releases the GIL, so threads use every core without pickling megabytes between
processes. At most `window` items are in flight, which bounds memory whatever the disk size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int | None = None, window: int = 0
) -> Iterator[R]:
    workers = workers or default_workers()
    window = window or 4 * workers
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="vmdk") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
