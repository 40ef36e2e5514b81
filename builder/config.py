"""Small configuration and report files (API accounts, known issues, matrix baselines): one
reader, so each says what is wrong the same way, as `file:line: message`, exit code 2.

The data comes from PyYAML's safe loader (or `json` for JSON reports, whose numbers YAML 1.1
reads otherwise); line numbers come from YAML's node tree, which holds for JSON as well, and
which is composed only when an error needs a line, so a large report costs one parse.
Recipes and kernel definitions have their own schema (builder.build.schema); this is for
files whose callers check a few keys by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from builder.errors import BadInput

Step = str | int  # a mapping key or a list index, as in doc["accounts"][0]["AccountId"]


class ConfigError(BadInput):
    """A configuration file is wrong at a line (or as a whole: no line)."""

    def __init__(self, shown: str, line: int | None, message: str) -> None:
        self.shown = shown
        self.line = line
        self.detail = message
        super().__init__(f"{shown}:{line}: {message}" if line else f"{shown}: {message}")


@dataclass(frozen=True)
class ConfigFile:
    shown: str  # how messages name the file, e.g. "--accounts /etc/amilab/accounts.yaml"
    text: str
    data: Any

    def error(self, message: str, *at: Step) -> ConfigError:
        """`message` at the line of doc[at[0]][at[1]]…, or of as much of that path as exists."""
        return ConfigError(self.shown, self.line(*at), message)

    def line(self, *at: Step) -> int | None:
        node = self._root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for step in at:
            found = _child(node, step)
            if found is None:
                break
            line, node = found
        return line

    def section(self, key: str, expected: str, *, non_empty: bool = False) -> list[Any]:
        """The list under top-level `key`; `expected` says what the file should hold."""
        items = self.data.get(key) if isinstance(self.data, dict) else None
        if not isinstance(items, list) or (non_empty and not items):
            raise self.error(expected, key)
        return items

    @cached_property
    def _root(self) -> yaml.Node | None:
        try:
            return yaml.compose(self.text, Loader=_Loader)
        except yaml.YAMLError:  # JSON that YAML 1.1 cannot read: no lines, the message stays
            return None


def _child(node: yaml.Node, step: Step) -> tuple[int, yaml.Node] | None:
    """(line, node) one step down: a mapping key's own line, a list item's first line."""
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            if knode.value == str(step):
                return knode.start_mark.line + 1, vnode
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        item = node.value[step]
        return item.start_mark.line + 1, item
    return None


# the C loader where PyYAML has one: the same data and marks, several times faster
_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(
    path: Path, shown: str | None = None, *, what: str = "file", as_json: bool = False
) -> ConfigFile:
    """Read and parse `path`: `what` names it in the message when it cannot be read; a
    syntax error is located at its line."""
    shown = shown or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(shown, None, f"cannot read the {what}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(shown, None, f"the {what} is not UTF-8 text") from None
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(shown, e.lineno, f"not JSON: {e.msg}") from None
        return ConfigFile(shown, text, data)
    try:
        data = yaml.load(text, Loader=_Loader)  # safe: C or Python SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(
            shown, mark.line + 1 if mark else None, f"not YAML: {e.problem or e.context}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(shown, None, f"not YAML: {str(e).splitlines()[0]}") from None
    return ConfigFile(shown, text, data)
