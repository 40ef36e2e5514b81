"""stop-instances, terminate-instances, and the scheduled events that stop or reboot an
instance later."""

from __future__ import annotations

import argparse

from harness.cli.command import add_command
from harness.cli.flags import add_instance_id, add_not_before, add_seconds, add_switch
from harness.cli.instances.common import register_state
from harness.cli.output import add_json, print_result


def register_stop_instances(sub: argparse._SubParsersAction) -> None:
    p = register_state(
        sub, "stop-instances", "stop_instances", "StoppingInstances",
        "stop instances (ACPI power button, then forced); volumes stay",
    )  # fmt: skip
    add_switch(p, "--force", "end the guest at once, without the power button (EC2's --force)")
    add_switch(p, "--hibernate", "save the guest's RAM beside its root volume; the next start "
               "resumes it")  # fmt: skip


def register_terminate_instances(sub: argparse._SubParsersAction) -> None:
    register_state(sub, "terminate-instances", "terminate_instances", "TerminatingInstances",
                   "terminate instances; DeleteOnTermination volumes are deleted")  # fmt: skip


def _schedule_event(args: argparse.Namespace) -> int:
    from harness.instances.events import parse_time
    from harness.instances.operations.stop import schedule_instance_event

    event = schedule_instance_event(args.instance_id, args.code, parse_time(args.not_before),
                                    args.description, args.window)  # fmt: skip
    line = f"{event['InstanceEventId']}\t{event['Code']}\t{event['NotBefore']}"
    return print_result(args, {"Event": event}, [line])


def _modify_event(args: argparse.Namespace) -> int:
    from harness.instances.events import parse_time
    from harness.instances.operations.stop import modify_instance_event_start_time

    out = modify_instance_event_start_time(
        args.instance_id, args.instance_event_id, parse_time(args.not_before)
    )
    return print_result(args, out, [f"{out['Event']['InstanceEventId']}\t"
                                    f"{out['Event']['NotBefore']}"])  # fmt: skip


def register_scheduled_events(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "schedule-instance-event",
        _schedule_event,
        "schedule a maintenance event on an instance, as AWS does (reboot or stop at a time)",
    )
    add_instance_id(p)
    p.add_argument("--code", required=True, help="instance-reboot, system-reboot, "
                   "instance-stop or instance-retirement")  # fmt: skip
    add_not_before(p)
    p.add_argument("--description", help="default: EC2's wording for the code")
    add_seconds(p, "--window", "NotAfter - NotBefore (default 7200)", default=7200.0)
    add_json(p)
    p = add_command(
        sub,
        "modify-instance-event-start-time",
        _modify_event,
        "move a scheduled event to a new start time (before its deadline)",
    )
    p.add_argument("--instance-id", required=True)
    p.add_argument("--instance-event-id", required=True)
    add_not_before(p)
    add_json(p)
