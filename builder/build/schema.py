"""A small declarative schema: each recipe key is declared once, as a dataclass field.

The field's `Key` metadata drives parsing, validation, defaults and the generated help
(mkosi's approach in `mkosi/config.py`). YAML nodes keep their line numbers so every error
names `file:line` and the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from builder.errors import RecipeError


@dataclass(frozen=True)
class Located:
    """Where a value came from, so later validation steps can still point at a line."""

    path: str
    lines: dict[str, int]

    def line(self, key: str) -> int | None:
        # a key left at its default has no line of its own: point at the recipe's start;
        # an item of a list (`extra-modules[1]`) at its list's line
        return self.lines.get(key) or self.lines.get(key.split("[", 1)[0]) or self.lines.get("")

    def error(self, key: str, message: str) -> RecipeError:
        return RecipeError(self.path, self.line(key), key, message)


class Kind:
    """How one key's YAML value is checked and converted."""

    describe = "a value"

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> Any:
        raise NotImplementedError


@dataclass
class _Ctx:
    path: str
    lines: dict[str, int]

    def fail(self, node: yaml.Node, key: str, message: str) -> RecipeError:
        return RecipeError(self.path, node.start_mark.line + 1, key, message)


def _scalar(node: yaml.Node, ctx: _Ctx, key: str, describe: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        got = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
        raise ctx.fail(node, key, f"expected {describe}, got {got}")
    return yaml.SafeLoader.construct_object(_LOADER, node)


class _NodeLoader(yaml.SafeLoader):
    def __init__(self) -> None:  # constructor used for scalars only; no stream needed
        yaml.SafeLoader.__init__(self, "")


_LOADER = _NodeLoader()


@dataclass(frozen=True)
class Str(Kind):
    pattern: str | None = None
    pattern_help: str = ""
    max_len: int = 4096

    @property
    def describe(self) -> str:  # type: ignore[override]
        return f"a string{' (' + self.pattern_help + ')' if self.pattern_help else ''}"

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> str:
        value = _scalar(node, ctx, key, self.describe)
        if not isinstance(value, str):
            raise ctx.fail(node, key, f"expected {self.describe}, got {_show(value)}")
        if len(value) > self.max_len:
            raise ctx.fail(node, key, f"longer than {self.max_len} characters")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise ctx.fail(node, key, f"{value!r} is not allowed; expected {self.describe}")
        return value


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...]

    @property
    def describe(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(self.choices)

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> str:
        value = _scalar(node, ctx, key, self.describe)
        if not isinstance(value, str) or value not in self.choices:
            raise ctx.fail(node, key, f"{_show(value)} is not allowed; allowed: {self.describe}")
        return value


@dataclass(frozen=True)
class Bool(Kind):
    describe = "true or false"

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> bool:
        value = _scalar(node, ctx, key, self.describe)
        if not isinstance(value, bool):
            raise ctx.fail(node, key, f"expected true or false, got {_show(value)}")
        return value


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int | None:
    m = _SIZE_RE.match(text)
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class Size(Kind):
    minimum: int
    maximum: int

    @property
    def describe(self) -> str:  # type: ignore[override]
        return f"a size such as 2G or 512M, from {_human(self.minimum)} to {_human(self.maximum)}"

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> int:
        value = _scalar(node, ctx, key, self.describe)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ctx.fail(node, key, f"expected {self.describe}, got {_show(value)}")
        size = value if isinstance(value, int) else parse_size(value)
        if size is None:
            raise ctx.fail(node, key, f"{value!r} is not a size; expected {self.describe}")
        if not self.minimum <= size <= self.maximum:
            raise ctx.fail(node, key, f"{value!r} is out of range; expected {self.describe}")
        return size


@dataclass(frozen=True)
class ListOf(Kind):
    item: Kind
    unique: bool = True

    @property
    def describe(self) -> str:  # type: ignore[override]
        return f"a list of {self.item.describe}"

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> tuple[Any, ...]:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.fail(node, key, f"expected {self.describe}")
        out = []
        for i, item in enumerate(node.value):
            value = self.item.convert(item, ctx, f"{key}[{i}]")
            if self.unique and value in out:
                raise ctx.fail(item, f"{key}[{i}]", f"{value!r} is listed twice")
            out.append(value)
        return tuple(out)


@dataclass(frozen=True)
class MapOf(Kind):
    key_pattern: str
    key_help: str
    value: Kind

    @property
    def describe(self) -> str:  # type: ignore[override]
        return f"a mapping of {self.key_help} to {self.value.describe}"

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise ctx.fail(node, key, f"expected {self.describe}")
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            name = knode.value
            if not isinstance(knode, yaml.ScalarNode) or not re.fullmatch(self.key_pattern, name):
                raise ctx.fail(knode, f"{key}.{name}", f"bad name; expected {self.key_help}")
            if name in out:
                raise ctx.fail(knode, f"{key}.{name}", "given twice")
            value = vnode.value if isinstance(vnode, yaml.ScalarNode) else None
            if value is None:
                raise ctx.fail(vnode, f"{key}.{name}", f"expected {self.value.describe}")
            out[name] = self.value.convert(vnode, ctx, f"{key}.{name}")
        return out


@dataclass(frozen=True)
class Section(Kind):
    cls: type

    @property
    def describe(self) -> str:  # type: ignore[override]
        names = (yaml_name(f) for f in dataclasses.fields(self.cls))
        return "a mapping with keys " + ", ".join(names)

    def convert(self, node: yaml.Node, ctx: _Ctx, key: str) -> Any:
        return build(self.cls, node, ctx, prefix=f"{key}.")


@dataclass(frozen=True)
class Key:
    """The single declaration of one recipe key."""

    kind: Kind
    help: str
    required: bool = False
    check: Callable[[Any], str | None] | None = None
    name: str = ""  # the key as the YAML spells it, where that is no Python name


def key(
    kind: Kind,
    help: str,
    default: Any = dataclasses.MISSING,
    *,
    required: bool = False,
    check: Callable[[Any], str | None] | None = None,
    name: str = "",
) -> Any:
    meta = {"key": Key(kind, help, required, check, name)}
    if required:
        return field(metadata=meta)
    if isinstance(default, list | dict):
        raise TypeError("use tuples or default factories for container defaults")
    if isinstance(kind, Section):
        return field(default_factory=kind.cls, metadata=meta)
    if isinstance(kind, MapOf):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def build(cls: type, node: yaml.Node, ctx: _Ctx, prefix: str = "") -> Any:
    """Turn a YAML mapping node into `cls`, validating every key against its declaration."""
    if not isinstance(node, yaml.MappingNode):
        where = prefix.rstrip(".") or cls.__name__.lower()
        raise ctx.fail(node, where, "expected a mapping of keys")
    declared = {yaml_name(f): f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for knode, vnode in node.value:
        name = str(knode.value)
        dotted = prefix + name
        if name in seen:
            raise ctx.fail(knode, dotted, "given twice")
        seen.add(name)
        f = declared.get(name)
        if f is None:
            allowed = ", ".join(declared)
            raise ctx.fail(knode, dotted, f"unknown key; allowed keys: {allowed}")
        spec: Key = f.metadata["key"]
        value = spec.kind.convert(vnode, ctx, dotted)
        if spec.check and (problem := spec.check(value)):
            raise ctx.fail(vnode, dotted, problem)
        ctx.lines[dotted] = knode.start_mark.line + 1
        values[f.name] = value
    for name, f in declared.items():
        if f.metadata["key"].required and name not in values:
            raise ctx.fail(node, prefix + name, "required key is missing")
    return cls(**values)


def yaml_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata["key"].name or f.name


def load_nodes(path: str, text: str) -> yaml.Node:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise RecipeError(path, line, "yaml", f"{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise RecipeError(path, None, "yaml", str(e).splitlines()[0]) from None
    if node is None:
        raise RecipeError(path, 1, "yaml", "the file is empty")
    return node


def help_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, allowed values, default, help) for every declared key, nested sections flattened."""
    rows = []
    for f in dataclasses.fields(cls):
        spec: Key = f.metadata["key"]
        dotted = prefix + yaml_name(f)
        if isinstance(spec.kind, Section):
            rows.append((dotted, "mapping", "", spec.help))
            rows.extend(help_rows(spec.kind.cls, dotted + "."))
            continue
        if spec.required:
            default = "(required)"
        elif f.default is not dataclasses.MISSING:
            default = _default_text(f.default)
        else:
            default = "{}"
        rows.append((dotted, spec.kind.describe, default, spec.help))
    return rows


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return _human(value) if isinstance(value, int) else repr(value) if value == "" else str(value)


def _human(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"
