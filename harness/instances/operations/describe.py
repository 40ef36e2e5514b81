"""What reads instances: DescribeInstances and its filters, DescribeInstanceStatus with
the status checks and events, the console output, where SSH reaches a running instance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from builder.errors import BadInput
from builder.images.records import now_iso
from builder.images.tables import Row
from harness.instances import events, store
from harness.instances.operations.common import (
    owner_of_instance,
    public,
    reconcile,
)
from harness.launch import instance as launch_dirs


def _matches(rec: Row, filters: dict[str, list[str]]) -> bool:
    for name, values in filters.items():
        if name == "instance-id":
            got = [rec["InstanceId"]]
        elif name == "image-id":
            got = [rec["ImageId"]]
        elif name == "instance-state-name":
            got = [rec["State"]["Name"]]
        elif name == "instance-type":
            got = [rec["InstanceType"]]
        elif name == "key-name":
            got = [rec.get("KeyName") or ""]
        elif name.startswith("tag:"):
            got = [t["Value"] for t in rec.get("Tags", []) if t["Key"] == name[4:]]
        elif name == "tag-key":
            got = [t["Key"] for t in rec.get("Tags", [])]
        else:
            raise BadInput(f"InvalidParameterValue: The filter '{name}' is invalid")
        if not any(g in values for g in got):
            return False
    return True


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """`Name=instance-state-name,Values=running,stopped` (the aws CLI's shorthand) or
    `instance-state-name=running,stopped`."""
    out: dict[str, list[str]] = {}
    for item in items:
        if item.startswith("Name="):
            name, _, values = item[5:].partition(",Values=")
        else:
            name, _, values = item.partition("=")
        if not name or not values:
            raise BadInput(f"--filters {item!r}: expected Name=NAME,Values=V1,V2")
        out.setdefault(name, []).extend(values.split(","))
    return out


def describe_instances(
    ids: list[str] | None = None, filters: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    recs = [store.find(i) for i in ids] if ids else store.instances().list()
    recs = [reconcile(r) for r in recs]
    reservations: dict[str, dict[str, Any]] = {}
    for r in recs:
        if not _matches(r, filters or {}):
            continue
        rid = r["Amilab"].get("ReservationId", "r-0")
        res = reservations.setdefault(
            rid, {"ReservationId": rid, "OwnerId": owner_of_instance(r), "Instances": []}
        )
        res["Instances"].append(public(r))
    return {"Reservations": list(reservations.values())}


def event_shapes(rec: Row) -> list[dict[str, Any]]:
    """An instance's events as describe-instance-status lists them (completed for a week)."""
    shown = events.recent(rec.get("Amilab", {}).get("Events") or [], time.time())
    return [events.api_shape(e) for e in sorted(shown, key=lambda e: e["NotBefore"])]


def status_check(rec: Row) -> dict[str, Any]:
    """EC2's InstanceStatus/SystemStatus for a record: `initializing` from launch (and each
    start) until the guest has answered, then `ok`; `not-applicable` when it is not running.
    The supervisor writes `Amilab.Reachable` when the guest's SSH banner reaches its port or
    the guest asks the metadata service (see harness.instances.supervisor); a record without
    the key was written by a supervisor from before it kept one: running counts as ok."""
    name = rec["State"]["Name"]
    if name not in ("pending", "running"):
        return {"Status": "not-applicable"}
    a = rec.get("Amilab") or {}
    ok = name == "running" and ("Reachable" not in a or bool(a["Reachable"]))
    detail = "passed" if ok else "initializing"
    return {
        "Status": "ok" if ok else "initializing",
        "Details": [{"Name": "reachability", "Status": detail}],
    }


def describe_instance_status(
    ids: list[str] | None = None, include_all: bool = False
) -> dict[str, Any]:
    """DescribeInstanceStatus: running instances (all with `include_all`), their scheduled
    events (completed ones for a week, described "[Completed] …") and status checks
    (`status_check`)."""
    recs = [store.find(i) for i in ids] if ids else store.instances().list()
    out = []
    for r in (reconcile(r) for r in recs):
        name = r["State"]["Name"]
        if name != "running" and not include_all:
            continue
        if name == "terminated" and not ids:
            continue
        out.append({
            "AvailabilityZone": r["Placement"]["AvailabilityZone"],
            "InstanceId": r["InstanceId"],
            "Events": event_shapes(r),
            "InstanceState": r["State"],
            "InstanceStatus": status_check(r),
            "SystemStatus": status_check(r),
        })  # fmt: skip
    return {"InstanceStatuses": out}


# -------------------------------------------------------------- console, ssh


def console_output(instance_id: str, latest: bool = True) -> dict[str, Any]:
    rec = reconcile(store.find(instance_id))
    log = launch_dirs.instance_logs() / f"{instance_id}.console.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    return {
        "InstanceId": instance_id,
        "Timestamp": now_iso(),
        "Output": text if latest else text[-64 * 1024 :],
        "State": rec["State"]["Name"],
    }


def ssh_target(instance_id: str) -> tuple[str, int, Path | None]:
    """(address, SSH port, the instance's own private key when it has one)."""
    rec = reconcile(store.find(instance_id))
    if rec["State"]["Name"] != "running":
        raise BadInput(
            f"IncorrectInstanceState: {instance_id} is {rec['State']['Name']}, not running"
        )
    key = Path(rec["Amilab"]["Dir"]) / "id_ed25519"
    port = int(rec["Amilab"].get("SshPort") or 22)
    return rec["PublicIpAddress"], port, key if key.exists() else None
