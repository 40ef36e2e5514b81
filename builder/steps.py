"""Steps with their own cleanup, run in order and undone in reverse (Packer's multistep).

The one runner for builds and launches. A step's cleanup runs whenever its `run` was entered,
whether the steps finished, failed, timed out or were interrupted; every cleanup runs even
when an earlier one raises (the failure is reported, not propagated). SIGINT and SIGTERM that
arrive during the cleanups are held off until all of them are done, then delivered as usual
(the callers turn SIGTERM into the same KeyboardInterrupt, `builder.signals`).

A `StepRunner` keeps the steps it entered until it is closed, so the steps of one launch can
be run across several calls and undone together later:

    with StepRunner(state) as runner:
        runner.run_all(steps)
        ...
        runner.run(another_step)
    # every entered step's cleanup has run, last first
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType, TracebackType
from typing import Generic, TypeVar

S = TypeVar("S")

# Crash testing (tests/integration/test_crash.py): every step boundary the runner passes is
# appended to the file AMILAB_STEP_TRACE names ("PID start|end STEP"), and the process kills
# itself with SIGKILL at the Nth boundary when AMILAB_KILL_AT_STEP=N: a crash exactly there.
TRACE_ENV, KILL_ENV = "AMILAB_STEP_TRACE", "AMILAB_KILL_AT_STEP"
_boundaries = 0


def boundary(event: str, name: str) -> None:
    """One step boundary passed (`start` or `end` of step `name`)."""
    global _boundaries
    _boundaries += 1
    if trace := os.environ.get(TRACE_ENV):
        with open(trace, "a") as f:
            f.write(f"{os.getpid()} {event} {name}\n")
    if os.environ.get(KILL_ENV) == str(_boundaries):
        os.kill(os.getpid(), signal.SIGKILL)


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Step(Generic[S]):
    name = "step"
    what = ""  # one line on what the step does, for progress displays

    def run(self, state: S) -> None:
        raise NotImplementedError

    def cleanup(self, state: S) -> None:
        """Undo what `run` did (or the part of it that happened); should not raise."""


# wraps each step's run, e.g. a progress display's stage: `lambda step: stages.stage(...)`
Around = Callable[[Step[S]], AbstractContextManager[object]]


@contextmanager
def interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM are recorded instead of acted on inside the block, then delivered to
    their handlers of before, in the order they came (each kind once)."""
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if signum not in pending:
            pending.append(signum)

    previous: dict[int, object] = {}
    try:
        for signum in HELD_SIGNALS:
            previous[signum] = signal.signal(signum, hold)
    except ValueError:  # not the main thread: signals are not ours to hold
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for signum in pending:
            signal.raise_signal(signum)


class StepRunner(Generic[S]):
    """Runs steps against one state and, on `close()` (or leaving its `with`), the cleanups
    of every step it entered, in reverse order, each once."""

    def __init__(self, state: S, around: Around[S] | None = None) -> None:
        self.state = state
        self.around = around
        self.entered: list[Step[S]] = []
        # (step, what its cleanup raised), in the order the cleanups ran
        self.cleanup_errors: list[tuple[Step[S], Exception]] = []
        self.closed = False

    def run(self, step: Step[S]) -> None:
        if self.closed:
            raise RuntimeError(f"step {step.name}: the runner was closed")
        # entered before run starts: a run that fails halfway still gets its cleanup
        self.entered.append(step)
        boundary("start", step.name)
        with self.around(step) if self.around else nullcontext():
            step.run(self.state)
        boundary("end", step.name)

    def run_all(self, steps: Iterable[Step[S]]) -> None:
        for step in steps:
            self.run(step)

    def close(self) -> None:
        self.closed = True
        with interrupts_held():
            while self.entered:
                step = self.entered.pop()
                try:
                    step.cleanup(self.state)
                except Exception as e:  # noqa: BLE001 - one failed cleanup must not skip the rest
                    self.cleanup_errors.append((step, e))
                    print(f"amilab: cleanup of {step.name} failed: {e}", file=sys.stderr)

    def __enter__(self) -> StepRunner[S]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run_steps(steps: Iterable[Step[S]], state: S, around: Around[S] | None = None) -> None:
    """Run `steps` in order, then every entered step's cleanup in reverse."""
    with StepRunner(state, around) as runner:
        runner.run_all(steps)
