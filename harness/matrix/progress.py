"""The live display of a matrix run (rich): a bar of finished cells with counts of passed,
failed, errored and skipped ones, and one line per running cell. Cells call in from worker
threads; rich's Live redraws from its own thread, under one lock."""

from __future__ import annotations

import threading
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from harness.matrix.cells import Cell
from harness.matrix.report import STYLE, SYMBOL
from harness.matrix.results import CellResult


class MatrixProgress:
    def __init__(self, total: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.lock = threading.Lock()
        self.running: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.bar = Progress(
            TextColumn("cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task("", total=total)
        self.live = Live(
            self._render(),
            console=self.console,
            refresh_per_second=4,
            get_renderable=self._render,
            transient=False,
        )

    def _render(self) -> Group:
        with self.lock:
            now = time.monotonic()
            lines = [
                Text(f"  running {key} ({now - t0:.0f} s)", style="cyan")
                for key, t0 in self.running.items()
            ]
            counts = "  ".join(
                f"{SYMBOL.get(k, '·')} {v} {k}" for k, v in sorted(self.counts.items())
            )
        self.bar.update(self.task, description=counts)
        return Group(self.bar, *lines)

    def __enter__(self) -> MatrixProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def started(self, cell: Cell) -> None:
        with self.lock:
            self.running[cell.key] = time.monotonic()

    def done(self, result: CellResult) -> None:
        with self.lock:
            self.running.pop(result.cell.key, None)
            m = "not run" if result.not_run else result.mark
            self.counts[m] = self.counts.get(m, 0) + 1
        self.bar.advance(self.task)
        if not result.not_run:
            klass = f" ({result.verdict.klass})" if result.verdict.klass else ""
            self.live.console.print(
                f"[{STYLE[result.mark]}]{SYMBOL[result.mark]} {result.mark}[/] {result.cell.key}"
                f"{klass} {result.seconds:.1f} s",
                highlight=False,
            )
