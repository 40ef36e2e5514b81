"""What every action module shares: the request context, the action table, ID and parameter
checks, tags (EC2's generic filters are in `filters`, the caller's resources in `lookup`)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from builder.errors import AmilabError
from builder.images.lifecycle import TAG_LIMIT
from builder.images.shapes import acting_as
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
    without ResourceType applies to it too); more than EC2's limit are refused before the
    resource is made."""
    out: dict[str, str] = {}
    for spec in params.get("TagSpecifications") or []:
        if spec.get("ResourceType") in (resource_type, None):
            out.update(tags_of(spec.get("Tags")))
    if len(out) > TAG_LIMIT:
        raise ApiError(
            "TagLimitExceeded",
            f"The maximum number of tags for a resource has been reached: {len(out)} given "
            f"for the {resource_type}, at most {TAG_LIMIT}",
        )
    return out


def after_reply(name: str, account: str, work: Callable[[], object]) -> None:
    """Long work the reply does not wait for (EC2 answers CreateImage and CopyImage with the
    pending AMI's ID), run in the server acting as the caller. The work records its own
    outcome (available, or failed with a reason); a server killed meanwhile leaves it
    pending with a dead owner, which the next start fails (builder/state/pending.py)."""

    def run() -> None:
        with acting_as(account), contextlib.suppress(AmilabError):
            work()

    threading.Thread(target=run, name=name, daemon=True).start()
