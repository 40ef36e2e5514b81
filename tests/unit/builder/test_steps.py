"""The one step runner (builds and launches): order, cleanups in reverse whatever happens,
signals held off during cleanups and delivered afterwards, a runner kept across calls."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

import pytest

from builder.steps import Step, StepRunner, run_steps


@dataclass
class Log:
    lines: list[str] = field(default_factory=list)


class Recorded(Step[Log]):
    """Logs its run and cleanup; `fail`/`fail_cleanup` make either raise, `on_cleanup` runs
    inside the cleanup (to send a signal)."""

    def __init__(
        self,
        name: str,
        fail: bool = False,
        fail_cleanup: bool = False,
        on_cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.fail = fail
        self.fail_cleanup = fail_cleanup
        self.on_cleanup = on_cleanup

    def run(self, state: Log) -> None:
        state.lines.append(f"run {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} broke")

    def cleanup(self, state: Log) -> None:
        state.lines.append(f"cleanup {self.name}")
        if self.on_cleanup:
            self.on_cleanup()
        if self.fail_cleanup:
            raise OSError(f"{self.name}'s cleanup broke")


@contextmanager
def handled(signum: int, log: Log) -> Iterator[None]:
    """A handler for `signum` that logs its delivery (restored afterwards)."""

    def handler(sig: int, frame: FrameType | None) -> None:
        log.lines.append(f"delivered {signal.Signals(sig).name}")

    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def test_steps_run_in_order_and_clean_up_in_reverse() -> None:
    log = Log()
    run_steps([Recorded("a"), Recorded("b"), Recorded("c")], log)
    assert log.lines == ["run a", "run b", "run c", "cleanup c", "cleanup b", "cleanup a"]


def test_a_failing_step_is_cleaned_up_too_and_later_steps_never_run() -> None:
    log = Log()
    with pytest.raises(RuntimeError, match="b broke"):
        run_steps([Recorded("a"), Recorded("b", fail=True), Recorded("c")], log)
    assert log.lines == ["run a", "run b", "cleanup b", "cleanup a"]


def test_an_interrupted_step_is_cleaned_up() -> None:
    class Interrupted(Recorded):
        def run(self, state: Log) -> None:
            super().run(state)
            raise KeyboardInterrupt

    log = Log()
    with pytest.raises(KeyboardInterrupt):
        run_steps([Recorded("a"), Interrupted("b")], log)
    assert log.lines == ["run a", "run b", "cleanup b", "cleanup a"]


def test_a_raising_cleanup_skips_nothing_and_is_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = Log()
    steps = [Recorded("a"), Recorded("b", fail_cleanup=True), Recorded("c", fail_cleanup=True)]
    runner = StepRunner(log)
    with runner:
        runner.run_all(steps)
    assert log.lines == ["run a", "run b", "run c", "cleanup c", "cleanup b", "cleanup a"]
    assert [(s.name, str(e)) for s, e in runner.cleanup_errors] == [
        ("c", "c's cleanup broke"),
        ("b", "b's cleanup broke"),
    ]
    err = capsys.readouterr().err
    assert "amilab: cleanup of c failed: c's cleanup broke" in err
    assert "amilab: cleanup of b failed: b's cleanup broke" in err


def test_the_steps_error_wins_over_a_raising_cleanup() -> None:
    log = Log()
    with pytest.raises(RuntimeError, match="b broke"):
        run_steps([Recorded("a", fail_cleanup=True), Recorded("b", fail=True)], log)
    assert log.lines == ["run a", "run b", "cleanup b", "cleanup a"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_cleanup_is_held_until_every_cleanup_ran(signum: int) -> None:
    log = Log()

    def send() -> None:
        os.kill(os.getpid(), signum)
        log.lines.append("sent")

    steps = [Recorded("a"), Recorded("b"), Recorded("c", on_cleanup=send)]
    with handled(signum, log):
        run_steps(steps, log)
        assert signal.getsignal(signum).__name__ == "handler"  # type: ignore[union-attr]
    name = signal.Signals(signum).name
    assert log.lines == [
        *("run a", "run b", "run c"),
        *("cleanup c", "sent", "cleanup b", "cleanup a"),
        f"delivered {name}",
    ]


def test_both_signals_during_cleanup_are_delivered_afterwards_once_each() -> None:
    log = Log()

    def send() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), signum)

    with handled(signal.SIGINT, log), handled(signal.SIGTERM, log):
        run_steps([Recorded("a"), Recorded("b", on_cleanup=send)], log)
    assert log.lines == [
        *("run a", "run b", "cleanup b", "cleanup a"),
        *("delivered SIGTERM", "delivered SIGINT"),
    ]


def test_ctrl_c_during_cleanup_interrupts_only_after_the_cleanups() -> None:
    """With Python's own SIGINT handler: the KeyboardInterrupt comes after the last cleanup."""
    log = Log()
    steps = [Recorded("a"), Recorded("b", on_cleanup=lambda: os.kill(os.getpid(), signal.SIGINT))]
    # A job started in the background by a non-interactive shell inherits SIGINT ignored,
    # so the test installs Python's own handler rather than assume it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_steps(steps, log)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert log.lines == ["run a", "run b", "cleanup b", "cleanup a"]


def test_a_signal_during_a_run_is_not_held() -> None:
    class Signalling(Recorded):
        def run(self, state: Log) -> None:
            super().run(state)
            os.kill(os.getpid(), signal.SIGTERM)
            state.lines.append("after kill")

    log = Log()
    with handled(signal.SIGTERM, log):
        run_steps([Signalling("a"), Recorded("b")], log)
    assert log.lines[:3] == ["run a", "delivered SIGTERM", "after kill"]


def test_a_runner_keeps_its_steps_across_calls_until_closed() -> None:
    log = Log()
    runner: StepRunner[Log] = StepRunner(log)

    def launch() -> None:
        runner.run_all([Recorded("instance"), Recorded("qemu")])

    def later() -> None:
        runner.run(Recorded("volume"))

    launch()
    later()
    assert log.lines == ["run instance", "run qemu", "run volume"]
    assert [s.name for s in runner.entered] == ["instance", "qemu", "volume"]
    runner.close()
    assert log.lines[3:] == ["cleanup volume", "cleanup qemu", "cleanup instance"]
    runner.close()  # nothing left to undo: no cleanup runs twice
    assert len(log.lines) == 6
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(Recorded("late"))
    assert len(log.lines) == 6


def test_the_with_form_cleans_up_on_the_way_out_of_a_failure() -> None:
    log = Log()
    with pytest.raises(RuntimeError, match="c broke"), StepRunner(log) as runner:
        runner.run(Recorded("a"))
        runner.run_all([Recorded("b"), Recorded("c", fail=True), Recorded("d")])
    assert log.lines == ["run a", "run b", "run c", "cleanup c", "cleanup b", "cleanup a"]


def test_around_wraps_each_run_and_sees_its_failure() -> None:
    log = Log()

    @contextmanager
    def stage(step: Step[Log]) -> Iterator[None]:
        log.lines.append(f"start {step.name}")
        try:
            yield
        except Exception:
            log.lines.append(f"failed {step.name}")
            raise
        log.lines.append(f"done {step.name}")

    with pytest.raises(RuntimeError):
        run_steps([Recorded("a"), Recorded("b", fail=True)], log, around=stage)
    assert log.lines == [
        *("start a", "run a", "done a"),
        *("start b", "run b", "failed b"),
        *("cleanup b", "cleanup a"),
    ]


def test_cleanups_run_outside_the_main_thread_too() -> None:
    log = Log()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_steps([Recorded("a"), Recorded("b")], log)
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == []
    assert log.lines == ["run a", "run b", "cleanup b", "cleanup a"]
