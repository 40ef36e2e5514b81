"""The actions, one module per resource family; importing them fills the action tables."""

from harness.api.actions import (  # noqa: F401 - they register their actions
    images,
    imports,
    instances,
    keys,
    network,
    storage,
    sts,
    tags,
)
from harness.api.actions.common import ACTIONS, STS_ACTIONS, Context

__all__ = ["ACTIONS", "STS_ACTIONS", "Context"]
