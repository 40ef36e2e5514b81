"""Scheduled events: EC2's IMDS JSON and dates, the API shape, rescheduling and its refusals."""

from __future__ import annotations

import calendar
import json

import pytest

from builder.errors import BadInput
from harness.imds.document import InstanceMetadata, document, maintenance_json, maintenance_time
from harness.imds.protocol import lookup
from harness.instances import events

T = calendar.timegm((2019, 1, 21, 9, 0, 43, 0, 0, 0))


def test_maintenance_json_is_ec2s_shape() -> None:
    e = events.new_event("system-reboot", T, "scheduled reboot", window=1000)
    assert e["EventId"].startswith("instance-event-") and len(e["EventId"]) == 32
    text = maintenance_json([e])
    # EC2's own example: keys in this order, " : " between key and value, day not padded
    assert text == (
        "[\n  {\n"
        '    "NotBefore" : "21 Jan 2019 09:00:43 GMT",\n'
        '    "Code" : "system-reboot",\n'
        '    "Description" : "scheduled reboot",\n'
        f'    "EventId" : "{e["EventId"]}",\n'
        '    "NotAfter" : "21 Jan 2019 09:17:23 GMT",\n'
        '    "State" : "active"\n'
        "  }\n]"
    )
    assert maintenance_time(calendar.timegm((2020, 3, 5, 1, 2, 3, 0, 0, 0))) == (
        "5 Mar 2020 01:02:03 GMT"
    )
    assert maintenance_json([]) == "[]"


def test_served_scheduled_then_history() -> None:
    md = InstanceMetadata(ami_id="ami-0123456789abcdef0", instance_id="i-0123456789abcdef0")
    tree = document(md)
    assert lookup(tree, "/latest/meta-data/events/maintenance/scheduled") == (200, "[]")
    assert lookup(tree, "/latest/meta-data/events/maintenance/")[1] == "history\nscheduled"
    assert lookup(tree, "/2018-03-28/meta-data/events/")[0] == 404  # came with 2018-08-17
    e = events.new_event("instance-stop", T)
    md.extra["events"] = [e]
    tree = document(md)
    (got,) = json.loads(lookup(tree, "/latest/meta-data/events/maintenance/scheduled")[1])
    assert got["EventId"] == e["EventId"] and got["State"] == "active"
    events.complete(e)
    tree = document(md)
    assert lookup(tree, "/latest/meta-data/events/maintenance/scheduled")[1] == "[]"
    (done,) = json.loads(lookup(tree, "/latest/meta-data/events/maintenance/history")[1])
    assert done["State"] == "completed" and done["Description"].startswith("[Completed] ")


def test_due_reschedule_and_refusals() -> None:
    e = events.new_event("instance-reboot", T)
    assert events.due([e], T - 1) is None and events.due([e], T) is e
    events.reschedule(e, T + 60, now=T - 10)
    assert e["NotBefore"] == T + 60 and e["NotAfter"] - e["NotBefore"] == events.DEFAULT_WINDOW
    with pytest.raises(BadInput, match="^InvalidParameterValue: The new start time must be in"):
        events.reschedule(e, T - 20, now=T - 10)
    with pytest.raises(BadInput, match="^InvalidParameterValue: The new start time must be bef"):
        events.reschedule(e, T + 30 * 86400, now=T)
    events.complete(e)
    with pytest.raises(BadInput, match="^IncorrectState"):
        events.reschedule(e, T + 90, now=T)
    with pytest.raises(BadInput, match="^InvalidParameterValue: event code 'system-maint"):
        events.new_event("system-maintenance", T)
    shape = events.api_shape(e)
    assert shape["NotBefore"] == "2019-01-21T09:01:43.000Z"
    assert set(shape) == {"InstanceEventId", "Code", "Description", "NotAfter", "NotBefore",
                          "NotBeforeDeadline"}  # fmt: skip


def test_parsing() -> None:
    assert events.parse_time("2019-01-21T09:00:43.000Z") == T
    assert events.parse_time("2019-01-21T09:00:43") == T
    assert events.parse_scheduled_event("instance-stop:30", now=T)["NotBefore"] == T + 30
    for bad in ("instance-stop", "instance-stop:x", "instance-stop:-1", "nope:5"):
        with pytest.raises(BadInput):
            events.parse_scheduled_event(bad)
    with pytest.raises(BadInput, match="is not a time"):
        events.parse_time("tomorrow")
