"""run-instances, start-instances, reboot-instances, and modify-instance-attribute (what
the next start launches with)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.cli.command import add_command
from harness.cli.flags import (
    add_instance_id,
    add_instance_ids,
    add_launch_arguments,
    add_seconds,
    launch_request,
)
from harness.cli.instances.common import register_state, ssh_address
from harness.cli.output import add_json, print_result


def _run_instances(args: argparse.Namespace) -> int:
    from harness.instances.operations.launch import (
        RunRequest,
        parse_block_device_mapping,
        run_instances,
    )
    from harness.launch.request import progress_printer

    if args.spot_action not in ("terminate", "stop"):
        from builder.errors import BadInput

        raise BadInput(f"--spot-action {args.spot_action!r}: terminate or stop")
    from harness.instances.events import parse_scheduled_event
    from harness.instances.hibernation import parse_options

    req = launch_request(
        RunRequest, args, image=args.image, count=args.count, key_name=args.key_name,
        scheduled_events=[parse_scheduled_event(e) for e in args.scheduled_event],
        placement=args.placement, shutdown_behavior=args.instance_initiated_shutdown_behavior,
        block_device_mappings=[parse_block_device_mapping(m) for m in args.block_device_mapping],
        spot_interruption_after=args.spot_interruption_after, spot_action=args.spot_action,
        spot_notice=args.spot_notice,
        hibernation_configured=parse_options(args.hibernation_options or "Configured=false"),
    )  # fmt: skip
    result = run_instances(req, say=None if args.json else progress_printer())
    lines = [f"{i['InstanceId']}\t{i['State']['Name']}\t{ssh_address(i)}"
             for i in result["Instances"]]  # fmt: skip
    return print_result(args, result, lines)


def register_run_instances(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "run-instances",
        _run_instances,
        "launch instances that keep running after the command (EC2's RunInstances)",
        description="Launch instances of an EBS-backed AMI. Each gets a supervisor process, a "
        "root volume over the image's snapshot and a loopback address of its own with SSH on "
        "port 22; the command returns with them pending (describe-instances shows running).",
    )
    p.add_argument("image", metavar="AMI", help="AMI ID or image name")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--key-name", metavar="NAME", help="a key pair: its public key is served")
    p.add_argument("--placement", default="us-east-1a", metavar="ZONE")
    p.add_argument(
        "--instance-initiated-shutdown-behavior", default="stop", choices=("stop", "terminate")
    )
    p.add_argument(
        "--block-device-mapping", action="append", default=[], metavar="MAPPING",
        help="/dev/sdb=ephemeral0, /dev/sdc=[snap-…]:[GiB][:true|false], /dev/sdb=none, "
        "or the aws CLI's JSON list (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--hibernation-options", metavar="Configured=true",
        help="allow stop-instances --hibernate (the root volume must hold the type's RAM)",
    )  # fmt: skip
    add_seconds(p, "--spot-interruption-after", "a spot interruption SECONDS after launch, "
                "announced at spot/instance-action --spot-notice seconds ahead, then carried "
                "out")  # fmt: skip
    p.add_argument("--spot-action", default="terminate", help="terminate or stop")
    add_seconds(p, "--spot-notice", "how long before the interruption it is announced (EC2: 120)",
                default=120.0)  # fmt: skip
    p.add_argument(
        "--scheduled-event", action="append", default=[], metavar="CODE:SECONDS",
        help="a scheduled event SECONDS after launch (instance-reboot, system-reboot, "
        "instance-stop, instance-retirement), served at events/maintenance/scheduled and "
        "carried out then (repeatable)",
    )  # fmt: skip
    add_launch_arguments(p, single=True)
    add_json(p, "print the RunInstances reservation")


def register_start_instances(sub: argparse._SubParsersAction) -> None:
    register_state(sub, "start-instances", "start_instances", "StartingInstances",
                   "start stopped instances again on the same volumes and address")  # fmt: skip


def _reboot(args: argparse.Namespace) -> int:
    from harness.instances.operations.launch import reboot_instances

    reboot_instances(args.instance_ids)
    return print_result(args, {"Return": True}, list(args.instance_ids))


def register_reboot_instances(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "reboot-instances", _reboot, "reboot running instances")
    add_instance_ids(p)
    add_json(p)


def _modify_instance_attribute(args: argparse.Namespace) -> int:
    from builder.errors import BadInput
    from harness.instances.attributes import modify_instance_attribute

    changes: dict[str, Any] = {}
    for flag, name in (("instance_type", "InstanceType"), ("kernel", "Kernel"),
                       ("ramdisk", "Ramdisk"), ("disable_api_termination", "DisableApiTermination"),
                       ("disable_api_stop", "DisableApiStop"),
                       ("instance_initiated_shutdown_behavior",
                        "InstanceInitiatedShutdownBehavior")):  # fmt: skip
        if getattr(args, flag) is not None:
            changes[name] = getattr(args, flag)
    if args.user_data is not None:
        try:
            changes["UserData"] = Path(args.user_data).read_bytes()
        except OSError as e:
            raise BadInput(f"--user-data {args.user_data}: {e.strerror}") from None
    if not changes:
        raise BadInput("modify-instance-attribute: name an attribute to change (see --help)")
    modify_instance_attribute(args.instance_id, changes)
    return print_result(args, {"Return": True}, [args.instance_id])


def register_modify_instance_attribute(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "modify-instance-attribute",
        _modify_instance_attribute,
        "change an instance's type, kernel, ramdisk, user data (stopped), protections",
        description="As EC2: the instance type, kernel, ramdisk and user data change only while "
        "the instance is stopped (the next start uses them); the shutdown behaviour and the "
        "stop/termination protections at any time.",
    )
    add_instance_id(p)
    p.add_argument("--instance-type", metavar="TYPE")
    p.add_argument("--kernel", metavar="AKI")
    p.add_argument("--ramdisk", metavar="ARI")
    p.add_argument("--user-data", metavar="FILE", help="the new user data (an empty file: none)")
    p.add_argument("--instance-initiated-shutdown-behavior", choices=("stop", "terminate"))
    p.add_argument("--disable-api-termination", action=argparse.BooleanOptionalAction,
                   help="refuse terminate-instances until turned off again")  # fmt: skip
    p.add_argument("--disable-api-stop", action=argparse.BooleanOptionalAction,
                   help="refuse stop-instances until turned off again")  # fmt: skip
    add_json(p)
