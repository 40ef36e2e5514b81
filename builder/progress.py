"""Progress display for long work: a live rich display on a terminal, plain lines otherwise.

Everything goes to stderr so `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True, highlight=False)
# reports (tables, results) go to stdout; when piped, wide enough that IDs are never cut
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def show_table(table: Table, console: Console | None = None) -> None:
    """`table` on `console` (default: `out`). On a terminal rich fits it to the terminal's
    width; anywhere else (a pipe, a file) nobody's window limits it, so it is printed as wide
    as its longest cells need: never an ID, name or release cut with "…", never a cell
    wrapped mid-value."""
    console = console or out
    if console.is_terminal:
        console.print(table)
        return
    # rich clamps a measurement to the width it is measured in: measure without a limit
    unlimited = console.options.update_width(1 << 16)
    needed = console.measure(table, options=unlimited).maximum
    if needed <= console.width:
        console.print(table)
        return
    # print(width=) cannot go past the console's width: a console of the needed width,
    # writing where `console` writes, with its colour and markup settings
    wide = Console(
        file=console.file,
        width=needed,
        color_system=console.color_system,  # type: ignore[arg-type]
        no_color=console.no_color,
        highlight=False,
        force_terminal=False,
    )
    wide.print(table)


class Stages:
    """Named stages of one build; `detail()` updates the running stage's text."""

    def __init__(self, title: str, quiet: bool = False) -> None:
        self.title = title
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.timings: dict[str, float] = {}
        self._progress: Progress | None = None
        self._task: int | None = None

    def __enter__(self) -> Stages:
        if self.live:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[stage]}[/] {task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()

    @contextmanager
    def stage(self, name: str, what: str = "") -> Iterator[None]:
        start = time.monotonic()
        if self._progress:
            self._task = self._progress.add_task(what, stage=f"{self.title}: {name}", total=1)
        ok = False
        try:
            yield
            ok = True
        finally:
            took = time.monotonic() - start
            self.timings[name] = round(took, 2)
            if self._progress and self._task is not None:
                self._progress.update(
                    self._task, completed=1, description=(what if ok else "[red]failed[/]")
                )
                self._task = None
            elif not self.quiet:
                state = "done" if ok else "FAILED"
                print(f"[{self.title}] {name}: {state} in {took:.1f} s", file=sys.stderr)

    def detail(self, text: str) -> None:
        if self._progress and self._task is not None:
            self._progress.update(self._task, description=text)
