"""StopInstances and TerminateInstances (protections checked for every instance before
any is touched), and the scheduled events that stop, reboot or retire an instance later."""

from __future__ import annotations

import signal
import time
from typing import Any

from builder.errors import BadInput
from builder.images.tables import Row
from harness.instances import attributes, events, hibernation, store
from harness.instances.operations.common import (
    current_states,
    reconcile,
    release_terminated,
    signal_supervisor,
    transition,
    wait_for,
)


def stop_instances(
    ids: list[str],
    wait: bool = False,
    timeout: float = 120,
    force: bool = False,
    hibernate: bool = False,
) -> list[dict]:
    """StopInstances: the ACPI power button, QEMU ended after AMILAB_STOP_TIMEOUT seconds if
    the guest has not shut down; `force` (EC2's --force) ends it at once, no shutdown;
    `hibernate` saves the guest's RAM for the next start (harness.instances.hibernation)."""
    out = []
    recs = current_states(ids)
    for rec, prev in recs:
        if prev in ("pending", "running"):
            attributes.refuse_if_protected(rec, "stopped")
        if hibernate:
            hibernation.refuse_stop(rec, prev, force)
    for rec, prev in recs:
        iid = rec["InstanceId"]
        if prev == "terminated":
            raise BadInput(f"IncorrectInstanceState: The instance '{iid}' is terminated")
        with store.locked(iid):
            if prev in ("pending", "running"):

                def change(r: Row) -> None:
                    why = hibernation.HIBERNATE if hibernate else store.USER_SHUTDOWN
                    store.set_state(r, "stopping", why)
                    r["Amilab"]["Desired"] = hibernation.DESIRED if hibernate else "stop"
                    r["Amilab"]["Force"] = force

                rec = store.instances().update(iid, change)
                signal_supervisor(rec, signal.SIGTERM)
        rec = reconcile(store.find(iid))
        if wait:  # a hibernation that fails ends running: said, exit 2
            rec = wait_for(iid, ("stopped",) + (("running",) if hibernate else ()), timeout)
            hibernation.refuse_if_failed(rec)
        out.append(transition(rec, prev))
    return out


def terminate_instances(ids: list[str], wait: bool = False, timeout: float = 120) -> list[dict]:
    out = []
    recs = current_states(ids)
    for rec, prev in recs:  # all refused before any is touched, as EC2 does
        if prev != "terminated":
            attributes.refuse_if_protected(rec, "terminated")
    for rec, prev in recs:
        iid = rec["InstanceId"]
        with store.locked(iid):
            if prev in store.SUPERVISED:

                def change(r: Row) -> None:
                    store.set_state(r, "shutting-down", store.USER_SHUTDOWN)
                    r["Amilab"]["Desired"] = "terminate"

                rec = store.instances().update(iid, change)
                if not signal_supervisor(rec, signal.SIGTERM):
                    rec = reconcile(rec)
            elif prev == "stopped":

                def ended(r: Row) -> None:
                    store.set_state(r, "terminated", store.USER_SHUTDOWN)

                rec = store.instances().update(iid, ended)
                release_terminated(rec)
        if wait:
            rec = wait_for(iid, ("terminated",), timeout)
        out.append(transition(store.find(iid), prev))
    return out


def _events_changed(iid: str, change: Any) -> Row:
    """Change an instance's events under its lock, then tell a running supervisor (it
    serves them and carries them out; one still starting reads them when it runs)."""
    with store.locked(iid):
        rec = store.instances().update(iid, change, "InvalidInstanceID.NotFound")
        if rec["State"]["Name"] == "running":
            signal_supervisor(rec, signal.SIGUSR1)
    return rec


def schedule_instance_event(
    instance_id: str, code: str, not_before: float, description: str | None = None,
    window: float = events.DEFAULT_WINDOW,
) -> dict[str, Any]:  # fmt: skip
    """What AWS does when it schedules maintenance (no public API): an event on an instance
    that is pending or running."""
    rec = reconcile(store.find(instance_id))
    if rec["State"]["Name"] not in ("pending", "running"):
        raise BadInput(
            f"IncorrectInstanceState: The instance '{instance_id}' is {rec['State']['Name']}; "
            "events are scheduled for pending or running instances"
        )
    if not_before < time.time():
        raise BadInput("InvalidParameterValue: The event start time must be in the future")
    event = events.new_event(code, not_before, description, window)

    def change(r: Row) -> None:
        r["Amilab"].setdefault("Events", []).append(event)

    _events_changed(instance_id, change)
    return events.api_shape(event)


def modify_instance_event_start_time(
    instance_id: str, event_id: str, not_before: float
) -> dict[str, Any]:
    """ModifyInstanceEventStartTime."""
    reconcile(store.find(instance_id))
    moved: list[Row] = []

    def change(r: Row) -> None:
        for e in r["Amilab"].get("Events") or []:
            if e["EventId"] == event_id:
                events.reschedule(e, not_before, time.time())
                moved.append(e)
        if not moved:
            raise BadInput(
                f"InvalidInstanceEventID.NotFound: The event ID '{event_id}' does not exist "
                f"for instance {instance_id}"
            )

    _events_changed(instance_id, change)
    return {"Event": events.api_shape(moved[0])}
