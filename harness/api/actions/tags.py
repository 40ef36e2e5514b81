"""CreateTags, DeleteTags, DescribeTags across the resources kept here: images (through
builder.images.lifecycle), instances, volumes, snapshots, security groups, key pairs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builder.images import lifecycle, volumes
from builder.images.registry import Registry
from builder.images.shapes import owner_of
from builder.images.tables import JsonTable, Row
from harness.api.actions import network
from harness.api.actions.common import Context, Params, Result, action, require, tags_of
from harness.api.actions.filters import field, filtered
from harness.api.actions.lookup import (
    IMAGE_PREFIXES,
    find_instance,
    find_owned,
    find_snapshot,
    find_volume,
    snapshot_visible,
    volume_owner,
)
from harness.api.errors import ApiError
from harness.instances import keypairs, store
from harness.instances.operations.common import owner_of_instance


def _row_table(resource: str, ctx: Context) -> tuple[JsonTable, str]:
    prefix = resource.split("-")[0]
    if prefix == "i":
        return store.instances(), find_instance(resource, ctx)["InstanceId"]
    if prefix == "vol":
        return volumes.volumes(), find_volume(resource, ctx)["VolumeId"]
    if prefix == "snap":
        return volumes.snapshots(), find_snapshot(resource, ctx, owned=True)["SnapshotId"]
    if prefix == "sg":
        g = network.find_group(resource, ctx.account_id)
        network.groups().ensure(g["GroupId"], g)  # the default group's row, made once
        return network.groups(), g["GroupId"]
    if prefix == "key":
        return store.key_pairs(), keypairs.table_key(resource)
    raise ApiError("InvalidID", f'The ID "{resource}" is not valid')


Change = Callable[[dict[str, str], str], None]  # a resource's tags, and its ID


def _check(resources: list[str], ctx: Context) -> tuple[list[str], list[Callable[[Change], None]]]:
    """The images among the resources, and for each other resource a function applying a
    change to its tags (given the tags and the resource's ID); all are looked up before any
    is changed, so an unknown ID changes nothing."""
    images: list[str] = []
    rows: list[Callable[[Change], None]] = []
    for r in resources:
        if r.split("-")[0] in IMAGE_PREFIXES:
            images.append(find_owned(r, ctx).image_id)
            continue
        table, key = _row_table(r, ctx)

        def on_row(change: Change, table: JsonTable = table, key: str = key, r: str = r) -> None:
            def apply(row: Row) -> None:
                tags = tags_of(row.get("Tags"))
                change(tags, r)
                row["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

            table.update(key, apply)

        rows.append(on_row)
    return images, rows


@action("CreateTags", "InvalidID")
def create_tags(p: Params, ctx: Context) -> Result:
    resources = require(p, "Resources")
    items = [f"{k}={v}" for k, v in tags_of(require(p, "Tags")).items()]
    tags = lifecycle.parse_tags(items)  # EC2's limits, as `amilab tag` applies them
    images, rows = _check(resources, ctx)
    with Registry().transaction():  # every resource's new tags, or (TagLimitExceeded) none
        if images:
            lifecycle.tag(images, tags)
        for apply in rows:
            apply(lambda have, r: lifecycle.add_tags(have, tags, r))
    return {}


@action("DeleteTags", "InvalidID")
def delete_tags(p: Params, ctx: Context) -> Result:
    resources = require(p, "Resources")
    given = p.get("Tags")
    if given is not None:
        tags_of([{"Value": "", **t} for t in given])  # each names its Key
    images, rows = _check(resources, ctx)
    # KEY removes whatever the value, KEY=VALUE only that value; no Tags: all, as they are
    # when the change is made (a tag added meanwhile goes too)
    items = None if given is None else [
        t["Key"] + (f"={t['Value']}" if "Value" in t else "") for t in given
    ]  # fmt: skip
    if images:
        lifecycle.untag(images, items)

    def change(have: dict[str, str], _resource: str) -> None:
        if given is None:
            have.clear()
        for t in given or []:
            if t["Key"] in have and ("Value" not in t or have[t["Key"]] == t["Value"]):
                del have[t["Key"]]

    for apply in rows:
        apply(change)
    return {}


def _all_tagged(ctx: Context) -> list[tuple[str, str, dict[str, str]]]:
    """(resource ID, resource type, tags) of everything the caller owns."""
    out: list[tuple[str, str, dict[str, str]]] = []
    for rec in Registry().list():
        if owner_of(rec) == ctx.account_id:
            out.append((rec.image_id, "image", dict(rec.tags)))
    for r in store.instances().list():
        if owner_of_instance(r) == ctx.account_id:
            out.append((r["InstanceId"], "instance", tags_of(r.get("Tags"))))
    for v in volumes.volumes().list():
        if volume_owner(v) == ctx.account_id:
            out.append((v["VolumeId"], "volume", tags_of(v.get("Tags"))))
    for s in volumes.snapshots().list():
        if snapshot_visible(s, ctx.account_id) and s.get("OwnerId") in (
            ctx.account_id,
            None,
            "",
        ):
            out.append((s["SnapshotId"], "snapshot", tags_of(s.get("Tags"))))
    for g in network.account_groups(ctx.account_id):
        out.append((g["GroupId"], "security-group", tags_of(g.get("Tags"))))
    for k in keypairs.describe_key_pairs():  # the caller's own: the request acts as it
        out.append((k["KeyPairId"], "key-pair", tags_of(k.get("Tags"))))
    return out


@action("DescribeTags")
def describe_tags(p: Params, ctx: Context) -> Result:
    items: list[dict[str, Any]] = [
        {"ResourceId": rid, "ResourceType": kind, "Key": k, "Value": v}
        for rid, kind, tags in _all_tagged(ctx) for k, v in sorted(tags.items())
    ]  # fmt: skip
    fields = {"resource-id": field("ResourceId"), "resource-type": field("ResourceType"),
              "key": field("Key"), "value": field("Value")}  # fmt: skip
    return {"Tags": filtered(items, p, fields)}
