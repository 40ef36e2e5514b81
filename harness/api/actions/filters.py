"""EC2's generic filters, the same for every Describe action: `Filters` read from the
request, matched against an item's fields (`field` names where a filter's value is)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from datetime import datetime
from typing import Any

from harness.api.actions.common import Params
from harness.api.errors import ApiError


def filters_of(params: Params) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in params.get("Filters") or []:
        name = f.get("Name")
        if not name:
            raise ApiError("InvalidParameterValue", "a filter needs a Name")
        out.setdefault(name, []).extend(str(v) for v in f.get("Values") or [])
    return out


def _values(item: Any) -> list[str]:
    if item is None:
        return []
    if isinstance(item, bool):
        return ["true" if item else "false"]
    if isinstance(item, datetime):
        return [item.strftime("%Y-%m-%dT%H:%M:%S.000Z")]
    if isinstance(item, list):
        return [v for x in item for v in _values(x)]
    return [str(item)]


def match_filters(item: dict[str, Any], filters: dict[str, list[str]],
                  fields: dict[str, Callable[[dict[str, Any]], Any]]) -> bool:  # fmt: skip
    """EC2's filter semantics: every filter must match; any of a filter's values may; `*`
    and `?` are wildcards; `tag:KEY` and `tag-key` work on every resource with Tags."""
    for name, wanted in filters.items():
        if name.startswith("tag:"):
            got = [t.get("Value", "") for t in item.get("Tags") or [] if t["Key"] == name[4:]]
        elif name == "tag-key":
            got = [t["Key"] for t in item.get("Tags") or []]
        elif name == "tag-value":
            got = [t.get("Value", "") for t in item.get("Tags") or []]
        elif name in fields:
            got = _values(fields[name](item))
        else:
            raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        if not any(fnmatch.fnmatchcase(g, w) for g in got for w in wanted):
            return False
    return True


def field(*path: str) -> Callable[[dict[str, Any]], Any]:
    """A filter's value read along `path`; a list on the way is walked item by item."""

    def get(item: Any) -> Any:
        values = [item]
        for key in path:
            nxt: list[Any] = []
            for v in values:
                if isinstance(v, list):
                    nxt.extend(x.get(key) for x in v if isinstance(x, dict))
                elif isinstance(v, dict):
                    nxt.append(v.get(key))
            values = nxt
        return values

    return get


def filtered(items: list[Any], params: Params,
             fields: dict[str, Callable[[dict[str, Any]], Any]]) -> list[Any]:  # fmt: skip
    """The items that match the request's Filters (read per item, as each Describe did)."""
    return [i for i in items if match_filters(i, filters_of(params), fields)]
