"""What every action module shares: the request context, the action table, ID checks and
EC2's generic filters."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harness.api.accounts import Account
from harness.api.errors import ApiError

Params = dict[str, Any]
Result = dict[str, Any]
Action = Callable[[Params, "Context"], Result]

ACTIONS: dict[str, Action] = {}
STS_ACTIONS: dict[str, Action] = {}


@dataclass
class Context:
    account: Account
    server: Any  # the ApiServer: its settings and shared state
    request_id: str

    @property
    def account_id(self) -> str:
        return self.account.account_id


def action(name: str, default_code: str = "InvalidParameterValue", sts: bool = False
           ) -> Callable[[Action], Action]:  # fmt: skip
    """Register an EC2 action; `default_code` is what a library refusal without a code of
    its own means for it (e.g. InvalidAMIID.NotFound for an image lookup)."""

    def register(func: Action) -> Action:
        func.default_code = default_code  # type: ignore[attr-defined]
        (STS_ACTIONS if sts else ACTIONS)[name] = func
        return func

    return register


def is_ec2_id(value: object, prefix: str) -> bool:
    """EC2's IDs: the prefix and 8 (the old form) or 17 lowercase hex digits."""
    return isinstance(value, str) and bool(
        re.fullmatch(rf"{prefix}-(?:[0-9a-f]{{8}}|[0-9a-f]{{17}})", value)
    )


def check_id(value: str, prefix: str, malformed: str) -> str:
    """An EC2 ID of this kind, or EC2's `….Malformed`."""
    if not is_ec2_id(value, prefix):
        raise ApiError(malformed, f'Invalid id: "{value}" (expecting "{prefix}-...")')
    return value


def check_ids(values: Iterable[str], prefix: str, malformed: str) -> list[str]:
    return [check_id(v, prefix, malformed) for v in values]


def require(params: Params, name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise ApiError("MissingParameter", f"The request must contain the parameter {name}")
    return value


def filters_of(params: Params) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in params.get("Filters") or []:
        name = f.get("Name")
        if not name:
            raise ApiError("InvalidParameterValue", "a filter needs a Name")
        out.setdefault(name, []).extend(str(v) for v in f.get("Values") or [])
    return out


def tags_of(obj: Any) -> dict[str, str]:
    """Tags as a dict from EC2's list shape (a request's: each needs its Key)."""
    out: dict[str, str] = {}
    for t in obj or []:
        if not isinstance(t, dict) or not t.get("Key"):
            raise ApiError("InvalidParameterValue", "Tag keys must not be empty")
        out[t["Key"]] = t.get("Value") or ""
    return out


def tag_specs(params: Params, resource_type: str) -> dict[str, str]:
    """The tags a create request's TagSpecifications give a resource of this type (a spec
    without ResourceType applies to it too)."""
    out: dict[str, str] = {}
    for spec in params.get("TagSpecifications") or []:
        if spec.get("ResourceType") in (resource_type, None):
            out.update(tags_of(spec.get("Tags")))
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
