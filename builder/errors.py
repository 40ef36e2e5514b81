"""Error classes that map to the CLI's exit codes (DESIGN.md: 2 bad input, 3 environment)."""

from __future__ import annotations


class AmilabError(Exception):
    """Base class: carries the exit code the CLI should return."""

    exit_code = 1


class BadInput(AmilabError):
    """A recipe, argument or disk file is wrong: exit code 2, one-line message."""

    exit_code = 2


class RecipeError(BadInput):
    """A recipe problem located at file:line and naming the key."""

    def __init__(self, path: str, line: int | None, key: str, message: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.detail = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {message}")


class EnvironmentProblem(AmilabError):
    """A tool is missing or the machine cannot do what was asked: exit code 3."""

    exit_code = 3


class BuildFailed(AmilabError):
    """A build step failed (e.g. an element script exited non-zero)."""

    exit_code = 1


class DiskFull(EnvironmentProblem):
    """A filesystem has no room (ENOSPC, EDQUOT, or a refused estimate): exit code 3, one line
    naming the filesystem's mount point and what was being written."""

    def __init__(self, mount: str, what: str, detail: str = "no space left") -> None:
        self.mount = mount
        self.what = what
        super().__init__(f"{mount}: {detail} (writing {what})")
