"""What reads instances: describe-instances, describe-instance-status,
get-console-output, and ssh to a running one."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from harness.cli.command import add_command
from harness.cli.flags import add_instance_id, add_instance_ids, add_switch
from harness.cli.instances.common import ssh_address
from harness.cli.output import add_json, print_result, show


def _describe_instances(args: argparse.Namespace) -> int:
    from harness.instances.operations.describe import describe_instances, parse_filters

    result = describe_instances(args.instance_ids, parse_filters(args.filters))

    def human() -> None:
        for res in result["Reservations"]:
            for i in res["Instances"]:
                reason = (i.get("StateReason") or {}).get("Message", "")
                print("\t".join([i["InstanceId"], i["State"]["Name"], i["ImageId"],
                                 i["InstanceType"], ssh_address(i),
                                 i.get("KernelId") or "-", reason]))  # fmt: skip

    return show(args, result, human)


def register_describe_instances(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "describe-instances", _describe_instances, "list instances")
    add_instance_ids(p, "*")
    p.add_argument(
        "--filters", action="append", default=[], metavar="Name=N,Values=V1,V2",
        help="instance-id, image-id, instance-state-name, instance-type, key-name, tag:KEY",
    )  # fmt: skip
    add_json(p, "print the describe-instances shape")


def _describe_status(args: argparse.Namespace) -> int:
    from harness.instances.operations.describe import describe_instance_status

    result = describe_instance_status(args.instance_ids, args.include_all_instances)
    lines = []
    for s in result["InstanceStatuses"]:
        lines.append(f"{s['InstanceId']}\t{s['InstanceState']['Name']}\t"
                     f"{s['InstanceStatus']['Status']}")  # fmt: skip
        lines += [f"  {e['InstanceEventId']}\t{e['Code']}\t{e['NotBefore']}\t{e['Description']}"
                  for e in s["Events"]]  # fmt: skip
    return print_result(args, result, lines)


def register_describe_instance_status(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "describe-instance-status", _describe_status,
                    "instances' status checks and scheduled events")  # fmt: skip
    add_instance_ids(p, "*")
    add_switch(p, "--include-all-instances", "not only running instances")
    add_json(p)


def _console(args: argparse.Namespace) -> int:
    from harness.instances.operations.describe import console_output

    out = console_output(args.instance_id)
    return show(args, out, lambda: sys.stdout.write(out["Output"]))


def register_get_console_output(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "get-console-output", _console, "an instance's serial console")
    add_instance_id(p)
    add_json(p)


def _ssh(args: argparse.Namespace) -> int:
    from builder.errors import BadInput, EnvironmentProblem
    from harness.instances.operations.describe import ssh_target

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
    add_instance_id(p)
    p.add_argument(
        "-i",
        "--identity",
        type=Path,
        metavar="KEY.pem",
        help="private key (default: the instance's own, when launched without one)",
    )
    p.add_argument("-l", "--user", default="root")
    p.add_argument("command", nargs=argparse.REMAINDER, help="[--] COMMAND to run")
