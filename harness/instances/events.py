"""Scheduled events, as EC2 announces maintenance: a reboot or a stop at a time.

EC2 has no public API to create one (AWS schedules them); amilab does it with
`schedule-instance-event` or `run-instances --scheduled-event CODE:SECONDS`, and moves one
with EC2's ModifyInstanceEventStartTime. An event lives in the instance's record
(`Amilab.Events`, times as epoch seconds); the metadata service serves the active ones at
`meta-data/events/maintenance/scheduled` and the completed or canceled ones at
`.../history` (harness.imds.document renders EC2's JSON), describe-instance-status shows
them all, and at NotBefore the supervisor carries the event out.
"""

from __future__ import annotations

import calendar
import math
import re
import secrets
import time
from typing import Any

from builder.errors import BadInput

# what each code makes happen (EC2: a system reboot reboots the host, an instance reboot
# the instance: either way the guest is restarted; retirement stops an EBS-backed instance)
ACTIONS = {
    "instance-reboot": "reboot",
    "system-reboot": "reboot",
    "instance-stop": "stop",
    "instance-retirement": "stop",
}
DESCRIPTIONS = {  # the wording EC2's examples use
    "instance-reboot": "The instance is scheduled for a reboot",
    "system-reboot": "scheduled reboot",
    "instance-stop": "The instance is running on degraded hardware",
    "instance-retirement": "The instance is scheduled for retirement",
}
DEFAULT_WINDOW = 2 * 3600.0  # NotAfter - NotBefore: EC2's maintenance windows are hours
DEADLINE = 7 * 86400.0  # how far a reschedule may move an event (NotBeforeDeadline)
HISTORY_SECONDS = 7 * 86400.0  # EC2 keeps completed events for a week
COMPLETED = "[Completed] "
SCHEDULED_STOP = (
    "Server.ScheduledStop",
    "Server.ScheduledStop: Stopped due to scheduled retirement",
)


def new_event(code: str, not_before: float, description: str | None = None,
              window: float = DEFAULT_WINDOW) -> dict[str, Any]:  # fmt: skip
    if code not in ACTIONS:
        raise BadInput(f"InvalidParameterValue: event code {code!r}; allowed: {', '.join(ACTIONS)}")
    if window <= 0:
        raise BadInput("InvalidParameterValue: the event window must be positive")
    not_before = float(math.ceil(not_before))  # EC2's times are whole seconds
    return {
        "EventId": "instance-event-" + secrets.token_hex(9)[:17],
        "Code": code,
        "Description": description or DESCRIPTIONS[code],
        "NotBefore": float(not_before),
        "NotAfter": float(not_before) + window,
        "NotBeforeDeadline": float(not_before) + DEADLINE,
        "State": "active",
    }


def parse_scheduled_event(text: str, now: float | None = None) -> dict[str, Any]:
    """`CODE:SECONDS` (run-instances --scheduled-event): CODE at SECONDS after now."""
    code, sep, seconds = text.partition(":")
    try:
        after = float(seconds)
    except ValueError:
        after = -1
    if not sep or after < 0:
        raise BadInput(
            f"--scheduled-event {text!r}: expected CODE:SECONDS, e.g. instance-reboot:60"
        )
    return new_event(code, (now or time.time()) + after)


def parse_time(text: str) -> float:
    """EC2's timestamp forms: 2020-03-25T10:00:00[.000][Z] (UTC), or +SECONDS from now."""
    if text.startswith("+"):
        try:
            return time.time() + float(text[1:])
        except ValueError:
            pass
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|\+00:00)?", text)
    if m:
        try:
            base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            base = None
        if base is not None:
            return base + float(m.group(2) or 0)
    raise BadInput(
        f"InvalidParameterValue: {text!r} is not a time (2020-03-25T10:00:00.000Z or +SECONDS)"
    )


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def api_shape(event: dict[str, Any]) -> dict[str, Any]:
    """InstanceStatusEvent, as describe-instance-status prints it."""
    return {
        "InstanceEventId": event["EventId"],
        "Code": event["Code"],
        "Description": event["Description"],
        "NotAfter": iso(event["NotAfter"]),
        "NotBefore": iso(event["NotBefore"]),
        "NotBeforeDeadline": iso(event["NotBeforeDeadline"]),
    }


def due(events: list[dict[str, Any]], now: float) -> dict[str, Any] | None:
    """The first active event whose time has come."""
    active = [e for e in events if e["State"] == "active" and e["NotBefore"] <= now]
    return min(active, key=lambda e: e["NotBefore"]) if active else None


def complete(event: dict[str, Any]) -> None:
    event["State"] = "completed"
    if not event["Description"].startswith(COMPLETED):
        event["Description"] = COMPLETED + event["Description"]


def recent(events: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """What is still shown: active events and those ended within the last week."""
    return [e for e in events if e["State"] == "active" or now - e["NotAfter"] < HISTORY_SECONDS]


def reschedule(event: dict[str, Any], not_before: float, now: float) -> None:
    """ModifyInstanceEventStartTime: a new start before the deadline; the window keeps its
    length."""
    if event["State"] != "active":
        raise BadInput(
            f"IncorrectState: The event {event['EventId']} is {event['State']} and cannot be "
            "rescheduled"
        )
    if not_before <= now:
        raise BadInput("InvalidParameterValue: The new start time must be in the future")
    if not_before > event["NotBeforeDeadline"]:
        raise BadInput(
            f"InvalidParameterValue: The new start time must be before the event deadline "
            f"{iso(event['NotBeforeDeadline'])}"
        )
    window = event["NotAfter"] - event["NotBefore"]
    not_before = float(math.ceil(not_before))
    event["NotBefore"], event["NotAfter"] = not_before, not_before + window
