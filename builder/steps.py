"""Steps with their own cleanup, run in order and undone in reverse (Packer's multistep).

A step's cleanup runs whenever its `run` was entered, whether the pipeline finished, failed,
timed out or was interrupted; Ctrl-C during the cleanups is held off so they complete, and
SIGTERM is turned into the same KeyboardInterrupt so it takes the same path.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

S = TypeVar("S")


class Step(Generic[S]):
    name = "step"

    def run(self, state: S) -> None:
        raise NotImplementedError

    def cleanup(self, state: S) -> None:
        """Undo what `run` did (or the part of it that happened); must not raise."""


@contextmanager
def _interrupts_held() -> Iterator[None]:
    try:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def run_steps(steps: Sequence[Step[S]], state: S) -> None:
    entered: list[Step[S]] = []
    try:
        for step in steps:
            entered.append(step)
            step.run(state)
    finally:
        with _interrupts_held():
            for step in reversed(entered):
                try:
                    step.cleanup(state)
                except Exception as e:  # noqa: BLE001 - one failed cleanup must not skip the rest
                    print(f"amilab: cleanup of {step.name} failed: {e}", file=sys.stderr)
