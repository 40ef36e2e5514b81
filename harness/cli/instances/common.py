"""What the instance commands share: the SSH address as they print it, and the
registration of the state-change commands (stop, start, terminate)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from harness.cli.command import add_command
from harness.cli.flags import add_instance_ids, add_switch
from harness.cli.output import add_json, print_result


def ssh_address(instance: dict[str, Any]) -> str:
    """ADDRESS, or ADDRESS:PORT when its SSH is not on port 22 (the host's sshd holds 22)."""
    address = instance.get("PublicIpAddress") or "-"
    port = instance.get("amilab:SshPort", 22)
    return address if port == 22 or address == "-" else f"{address}:{port}"


def _state_command(op: str, key: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        # imported when the command runs, as every command's library is: --help stays quick
        from harness.instances.operations import launch, stop

        func = {"start_instances": launch.start_instances, "stop_instances": stop.stop_instances,
                "terminate_instances": stop.terminate_instances}[op]  # fmt: skip
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


def register_state(
    sub: argparse._SubParsersAction, name: str, op: str, key: str, help: str
) -> argparse.ArgumentParser:
    p = add_command(sub, name, _state_command(op, key), help)
    add_instance_ids(p)
    add_switch(p, "--wait", "return once the change is complete")
    add_json(p)
    return p
