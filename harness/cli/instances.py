"""Long-lived instances, key pairs, EBS volumes and snapshots, create-image: EC2's verbs with
the aws CLI's names. Each command parses its arguments and calls harness.instances (or
builder.images.volumes); `--json` prints EC2's response shape, else a line or table for a
person (IDs first, so scripts can take them)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from harness.cli.command import add_command
from harness.cli.flags import add_launch_arguments, launch_request
from harness.cli.output import add_json, print_result, show

# ------------------------------------------------------------------ instances


def _ssh_address(instance: dict[str, Any]) -> str:
    """ADDRESS, or ADDRESS:PORT when its SSH is not on port 22 (the host's sshd holds 22)."""
    address = instance.get("PublicIpAddress") or "-"
    port = instance.get("amilab:SshPort", 22)
    return address if port == 22 or address == "-" else f"{address}:{port}"


def _run_instances(args: argparse.Namespace) -> int:
    from harness.instances.operations import RunRequest, parse_block_device_mapping, run_instances
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
    lines = [f"{i['InstanceId']}\t{i['State']['Name']}\t{_ssh_address(i)}"
             for i in result["Instances"]]  # fmt: skip
    return print_result(args, result, lines)


def register_run_instances(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "run-instances", _run_instances,
        "launch instances that keep running after the command (EC2's RunInstances)",
        description="Launch instances of an EBS-backed AMI. Each gets a supervisor process, a "
        "root volume over the image's snapshot and a loopback address of its own with SSH on "
        "port 22; the command returns with them pending (describe-instances shows running).",
    )  # fmt: skip
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
        "--spot-interruption-after", type=float, metavar="SECONDS",
        help="a spot interruption SECONDS after launch, announced at spot/instance-action "
        "--spot-notice seconds ahead, then carried out",
    )  # fmt: skip
    p.add_argument("--spot-action", default="terminate", help="terminate or stop")
    p.add_argument(
        "--spot-notice",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long before the interruption it is announced (EC2: 120)",
    )
    p.add_argument(
        "--scheduled-event", action="append", default=[], metavar="CODE:SECONDS",
        help="a scheduled event SECONDS after launch (instance-reboot, system-reboot, "
        "instance-stop, instance-retirement), served at events/maintenance/scheduled and "
        "carried out then (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--hibernation-options", metavar="Configured=true",
        help="allow stop-instances --hibernate (the root volume must hold the type's RAM)",
    )  # fmt: skip
    add_launch_arguments(p, single=True)
    add_json(p, "print the RunInstances reservation")


def _describe_instances(args: argparse.Namespace) -> int:
    from harness.instances.operations import describe_instances, parse_filters

    result = describe_instances(args.instance_ids, parse_filters(args.filters))

    def human() -> None:
        for res in result["Reservations"]:
            for i in res["Instances"]:
                reason = (i.get("StateReason") or {}).get("Message", "")
                print("\t".join([i["InstanceId"], i["State"]["Name"], i["ImageId"],
                                 i["InstanceType"], _ssh_address(i),
                                 i.get("KernelId") or "-", reason]))  # fmt: skip

    return show(args, result, human)


def register_describe_instances(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "describe-instances", _describe_instances, "list instances")
    p.add_argument("instance_ids", nargs="*", metavar="INSTANCE_ID")
    p.add_argument(
        "--filters", action="append", default=[], metavar="Name=N,Values=V1,V2",
        help="instance-id, image-id, instance-state-name, instance-type, key-name, tag:KEY",
    )  # fmt: skip
    add_json(p, "print the describe-instances shape")


def _state_command(op: str, key: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from harness.instances import operations

        func = getattr(operations, op)
        extra = {"force": True} if getattr(args, "force", False) else {}
        if getattr(args, "hibernate", False):
            extra["hibernate"] = True
        changes = func(args.instance_ids, wait=args.wait, **extra)
        lines = [f"{c['InstanceId']}\t{c['PreviousState']['Name']} -> {c['CurrentState']['Name']}"
                 + _hibernation_note(op, c["InstanceId"]) for c in changes]  # fmt: skip
        return print_result(args, {key: changes}, lines)

    return run


def _hibernation_note(op: str, instance_id: str) -> str:
    """How a start went with a hibernated state (resumed, or cold and why), or what a
    hibernating stop saved, as a tab-separated tail."""
    from harness.instances import hibernation, store

    rec = store.find(instance_id)
    notes = {"start_instances": hibernation.start_note, "stop_instances": hibernation.saved_note}
    note = notes[op](rec) if op in notes else ""
    return f"\t{note}" if note else ""


def _register_state(
    sub: argparse._SubParsersAction, name: str, op: str, key: str, help: str
) -> argparse.ArgumentParser:
    p = add_command(sub, name, _state_command(op, key), help)
    p.add_argument("instance_ids", nargs="+", metavar="INSTANCE_ID")
    p.add_argument("--wait", action="store_true", help="return once the change is complete")
    add_json(p)
    return p


def register_stop_instances(sub: argparse._SubParsersAction) -> None:
    p = _register_state(
        sub, "stop-instances", "stop_instances", "StoppingInstances",
        "stop instances (ACPI power button, then forced); volumes stay",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true",
        help="end the guest at once, without the power button (EC2's --force)",
    )  # fmt: skip
    p.add_argument(
        "--hibernate", action="store_true",
        help="save the guest's RAM beside its root volume; the next start resumes it",
    )  # fmt: skip


def register_start_instances(sub: argparse._SubParsersAction) -> None:
    _register_state(sub, "start-instances", "start_instances", "StartingInstances",
                    "start stopped instances again on the same volumes and address")  # fmt: skip


def register_terminate_instances(sub: argparse._SubParsersAction) -> None:
    _register_state(sub, "terminate-instances", "terminate_instances", "TerminatingInstances",
                    "terminate instances; DeleteOnTermination volumes are deleted")  # fmt: skip


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
        sub, "modify-instance-attribute", _modify_instance_attribute,
        "change an instance's type, kernel, ramdisk, user data (stopped), protections",
        description="As EC2: the instance type, kernel, ramdisk and user data change only while "
        "the instance is stopped (the next start uses them); the shutdown behaviour and the "
        "stop/termination protections at any time.",
    )  # fmt: skip
    p.add_argument("instance_id", metavar="INSTANCE_ID")
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


def _reboot(args: argparse.Namespace) -> int:
    from harness.instances.operations import reboot_instances

    reboot_instances(args.instance_ids)
    return print_result(args, {"Return": True}, list(args.instance_ids))


def register_reboot_instances(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "reboot-instances", _reboot, "reboot running instances")
    p.add_argument("instance_ids", nargs="+", metavar="INSTANCE_ID")
    add_json(p)


def _schedule_event(args: argparse.Namespace) -> int:
    from harness.instances.events import parse_time
    from harness.instances.operations import schedule_instance_event

    event = schedule_instance_event(args.instance_id, args.code, parse_time(args.not_before),
                                    args.description, args.window)  # fmt: skip
    line = f"{event['InstanceEventId']}\t{event['Code']}\t{event['NotBefore']}"
    return print_result(args, {"Event": event}, [line])


def _modify_event(args: argparse.Namespace) -> int:
    from harness.instances.events import parse_time
    from harness.instances.operations import modify_instance_event_start_time

    out = modify_instance_event_start_time(
        args.instance_id, args.instance_event_id, parse_time(args.not_before)
    )
    return print_result(args, out, [f"{out['Event']['InstanceEventId']}\t"
                                    f"{out['Event']['NotBefore']}"])  # fmt: skip


def _describe_status(args: argparse.Namespace) -> int:
    from harness.instances.operations import describe_instance_status

    result = describe_instance_status(args.instance_ids, args.include_all_instances)
    lines = []
    for s in result["InstanceStatuses"]:
        lines.append(f"{s['InstanceId']}\t{s['InstanceState']['Name']}\t"
                     f"{s['InstanceStatus']['Status']}")  # fmt: skip
        lines += [f"  {e['InstanceEventId']}\t{e['Code']}\t{e['NotBefore']}\t{e['Description']}"
                  for e in s["Events"]]  # fmt: skip
    return print_result(args, result, lines)


def register_events(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "schedule-instance-event", _schedule_event,
        "schedule a maintenance event on an instance, as AWS does (reboot or stop at a time)",
    )  # fmt: skip
    p.add_argument("instance_id", metavar="INSTANCE_ID")
    p.add_argument("--code", required=True, help="instance-reboot, system-reboot, "
                   "instance-stop or instance-retirement")  # fmt: skip
    p.add_argument("--not-before", required=True, metavar="TIME",
                   help="2020-03-25T10:00:00.000Z (UTC) or +SECONDS from now")  # fmt: skip
    p.add_argument("--description", help="default: EC2's wording for the code")
    p.add_argument("--window", type=float, default=7200.0, metavar="SECONDS",
                   help="NotAfter - NotBefore (default 7200)")  # fmt: skip
    add_json(p)
    p = add_command(
        sub, "modify-instance-event-start-time", _modify_event,
        "move a scheduled event to a new start time (before its deadline)",
    )  # fmt: skip
    p.add_argument("--instance-id", required=True)
    p.add_argument("--instance-event-id", required=True)
    p.add_argument("--not-before", required=True, metavar="TIME",
                   help="2020-03-25T10:00:00.000Z (UTC) or +SECONDS from now")  # fmt: skip
    add_json(p)
    p = add_command(
        sub, "describe-instance-status", _describe_status,
        "instances' status checks and scheduled events",
    )  # fmt: skip
    p.add_argument("instance_ids", nargs="*", metavar="INSTANCE_ID")
    p.add_argument("--include-all-instances", action="store_true",
                   help="not only running instances")  # fmt: skip
    add_json(p)


def _console(args: argparse.Namespace) -> int:
    from harness.instances.operations import console_output

    out = console_output(args.instance_id)
    return show(args, out, lambda: sys.stdout.write(out["Output"]))


def register_get_console_output(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "get-console-output", _console, "an instance's serial console")
    p.add_argument("instance_id", metavar="INSTANCE_ID")
    add_json(p)


def _ssh(args: argparse.Namespace) -> int:
    from builder.errors import BadInput, EnvironmentProblem
    from harness.instances.operations import ssh_target

    address, port, own_key = ssh_target(args.instance_id)
    key = args.identity or own_key
    if key is None:
        raise BadInput(
            f"{args.instance_id} was launched with a key pair: give its private key with -i FILE"
        )
    ssh = shutil.which("ssh")
    if ssh is None:
        raise EnvironmentProblem("ssh is missing (Debian's openssh-client)")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    argv = [ssh, "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-p", str(port),
            f"{args.user}@{address}", *command]  # fmt: skip
    sys.stdout.flush()
    os.execv(ssh, argv)
    return 0  # not reached


def register_ssh(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "ssh",
        _ssh,
        "ssh to a running instance's address, port 22",
        description="amilab ssh [-i KEY.pem] INSTANCE [-- COMMAND]: options come "
        "before the instance, as with ssh itself",
    )
    p.add_argument("instance_id", metavar="INSTANCE_ID")
    p.add_argument(
        "-i",
        "--identity",
        type=Path,
        metavar="KEY.pem",
        help="private key (default: the instance's own, when launched without one)",
    )
    p.add_argument("-l", "--user", default="root")
    p.add_argument("command", nargs=argparse.REMAINDER, help="[--] COMMAND to run")


# ------------------------------------------------------------------ key pairs


def _create_key_pair(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import parse_tags
    from harness.instances.keypairs import create_key_pair, public_view

    row, private = create_key_pair(args.key_name, args.key_type, parse_tags(args.tag))
    payload = public_view(row) | {"KeyMaterial": private}
    return show(args, payload, lambda: sys.stdout.write(private))


def _import_key_pair(args: argparse.Namespace) -> int:
    from builder.errors import BadInput
    from builder.images.lifecycle import parse_tags
    from harness.instances.keypairs import import_key_pair, public_view

    try:
        material = Path(args.public_key_material).read_text()
    except OSError as e:
        raise BadInput(f"--public-key-material {args.public_key_material}: {e.strerror}") from None
    row = import_key_pair(args.key_name, material, parse_tags(args.tag))
    return print_result(args, public_view(row), [row["KeyName"]])


def _describe_key_pairs(args: argparse.Namespace) -> int:
    from harness.instances.keypairs import describe_key_pairs

    rows = describe_key_pairs(args.key_names)
    return print_result(args, {"KeyPairs": rows},
                        [f"{r['KeyName']}\t{r['KeyFingerprint']}" for r in rows])  # fmt: skip


def _delete_key_pair(args: argparse.Namespace) -> int:
    from harness.instances.keypairs import delete_key_pair

    delete_key_pair(args.key_name)
    return print_result(args, {"Return": True}, [])


def register_key_pairs(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "create-key-pair",
        _create_key_pair,
        "make a key pair: amilab keeps the public half, prints the private key once",
    )
    p.add_argument("--key-name", required=True)
    p.add_argument("--key-type", default="ed25519", choices=("ed25519", "rsa"))
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    add_json(p, "CreateKeyPair's response (KeyMaterial is the private key)")
    p = add_command(sub, "import-key-pair", _import_key_pair, "register your own public key")
    p.add_argument("--key-name", required=True)
    p.add_argument("--public-key-material", required=True, metavar="FILE.pub")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    add_json(p)
    p = add_command(sub, "describe-key-pairs", _describe_key_pairs, "list key pairs")
    p.add_argument("--key-names", nargs="*", default=[], metavar="NAME")
    add_json(p)
    p = add_command(sub, "delete-key-pair", _delete_key_pair, "forget a key pair")
    p.add_argument("--key-name", required=True)
    add_json(p)


# ---------------------------------------------------------- volumes, snapshots


def _create_volume(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import parse_tags
    from builder.images.volumes import create_volume, public

    vol = create_volume(args.size, args.snapshot_id, args.availability_zone, args.volume_type,
                        parse_tags(args.tag))  # fmt: skip
    return print_result(args, public(vol), [vol["VolumeId"]])


def _attach_volume(args: argparse.Namespace) -> int:
    from harness.instances.operations import attach_volume

    att = attach_volume(args.volume_id, args.instance_id, args.device)
    return print_result(args, att, [f"{att['VolumeId']}\t{att['State']}"])


def _detach_volume(args: argparse.Namespace) -> int:
    from harness.instances.operations import detach_volume

    att = detach_volume(args.volume_id, args.instance_id, force=args.force)
    return print_result(args, att, [f"{att['VolumeId']}\t{att['State']}"])


def _describe_volumes(args: argparse.Namespace) -> int:
    from builder.images.volumes import describe_volumes

    rows = describe_volumes(args.volume_ids)
    lines = [f"{v['VolumeId']}\t{v['State']}\t{v['Size']}\t{v['SnapshotId'] or '-'}\t"
             + ",".join(a["InstanceId"] for a in v["Attachments"]) for v in rows]  # fmt: skip
    return print_result(args, {"Volumes": rows}, lines)


def _delete_volume(args: argparse.Namespace) -> int:
    from builder.images.volumes import delete_volume

    delete_volume(args.volume_id)
    return print_result(args, {"Return": True}, [])


def _create_snapshot(args: argparse.Namespace) -> int:
    from builder.images.volumes import create_snapshot, public

    snap = create_snapshot(args.volume_id, args.description or "")
    return print_result(args, public(snap), [snap["SnapshotId"]])


def _describe_snapshots(args: argparse.Namespace) -> int:
    from builder.images.volumes import describe_snapshots

    rows = describe_snapshots(args.snapshot_ids)
    lines = [f"{s['SnapshotId']}\t{s['State']}\t{s['VolumeId']}\t{s['VolumeSize']}" for s in rows]
    return print_result(args, {"Snapshots": rows}, lines)


def _copy_snapshot(args: argparse.Namespace) -> int:
    from builder.images.volumes import copy_snapshot

    snap = copy_snapshot(args.source_snapshot_id, args.description)
    return print_result(args, {"SnapshotId": snap["SnapshotId"]}, [snap["SnapshotId"]])


def _delete_snapshot(args: argparse.Namespace) -> int:
    from builder.images.volumes import delete_snapshot

    delete_snapshot(args.snapshot_id)
    return print_result(args, {"Return": True}, [])


def register_volumes(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "create-volume", _create_volume, "an EBS volume: empty or from a snapshot")
    p.add_argument("--size", type=int, metavar="GiB")
    p.add_argument("--snapshot-id")
    p.add_argument("--availability-zone", default="us-east-1a")
    p.add_argument("--volume-type", default="gp2")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    add_json(p)
    p = add_command(sub, "attach-volume", _attach_volume,
                    "attach a volume (to a running instance by hot-plug)")  # fmt: skip
    p.add_argument("--volume-id", required=True)
    p.add_argument("--instance-id", required=True)
    p.add_argument("--device", required=True, metavar="/dev/sdX")
    add_json(p)
    p = add_command(sub, "detach-volume", _detach_volume,
                    "detach a volume (a running guest lets go of it first)")  # fmt: skip
    p.add_argument("--volume-id", required=True)
    p.add_argument("--instance-id")
    p.add_argument("--force", action="store_true",
                   help="end the attachment even if the guest does not let go")  # fmt: skip
    add_json(p)
    p = add_command(sub, "describe-volumes", _describe_volumes, "list volumes")
    p.add_argument("volume_ids", nargs="*", metavar="VOLUME_ID")
    add_json(p)
    p = add_command(sub, "delete-volume", _delete_volume, "delete an available volume")
    p.add_argument("--volume-id", required=True)
    add_json(p)
    p = add_command(sub, "create-snapshot", _create_snapshot, "an immutable copy of a volume")
    p.add_argument("--volume-id", required=True)
    p.add_argument("--description")
    add_json(p)
    p = add_command(sub, "describe-snapshots", _describe_snapshots, "list snapshots")
    p.add_argument("snapshot_ids", nargs="*", metavar="SNAPSHOT_ID")
    add_json(p)
    p = add_command(sub, "copy-snapshot", _copy_snapshot, "a snapshot under a new ID")
    p.add_argument("--source-snapshot-id", required=True)
    p.add_argument("--description")
    add_json(p)
    p = add_command(
        sub,
        "delete-snapshot",
        _delete_snapshot,
        "delete a snapshot (refused while a registered image uses it)",
    )
    p.add_argument("--snapshot-id", required=True)
    add_json(p)


# ------------------------------------------------------------------ create-image


def _create_image(args: argparse.Namespace) -> int:
    from harness.instances.operations import create_image

    rec = create_image(args.instance_id, args.name, args.no_reboot, args.description or "")
    return print_result(args, {"ImageId": rec.image_id}, [rec.image_id])


def register_create_image(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "create-image",
        _create_image,
        "an AMI from an instance: its volumes snapshotted, the AMI refers to them",
    )
    p.add_argument("instance_id", metavar="INSTANCE_ID")
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    p.add_argument(
        "--no-reboot",
        action="store_true",
        help="snapshot the running instance without stopping it first",
    )
    add_json(p)
