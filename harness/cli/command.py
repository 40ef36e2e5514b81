"""How a command is declared: its parser (one error line, exit 2) and the function it calls."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 as well
        self.exit(2, f"amilab: error: {message}\n")


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    **kw: Any,
) -> argparse.ArgumentParser:
    """A subcommand that runs `func(args)`; `kw` as argparse's add_parser takes it."""
    p = sub.add_parser(name, help=help, **kw)
    p.set_defaults(func=func)
    return p
