"""Long-lived instances, key pairs, EBS volumes and snapshots, create-image: EC2's verbs with
the aws CLI's names, one module per family. Each command parses its arguments and calls
harness.instances (or builder.images.volumes); `--json` prints EC2's response shape, else a
line or table for a person (IDs first, so scripts can take them).

harness.cli registers the groups below in the order `amilab --help` lists them.
"""

from __future__ import annotations

import argparse

from harness.cli.instances.describe import (
    register_describe_instance_status,
    register_describe_instances,
    register_get_console_output,
    register_ssh,
)
from harness.cli.instances.images import register_create_image
from harness.cli.instances.keypairs import register_key_pairs
from harness.cli.instances.launch import (
    register_modify_instance_attribute,
    register_reboot_instances,
    register_run_instances,
    register_start_instances,
)
from harness.cli.instances.stop import (
    register_scheduled_events,
    register_stop_instances,
    register_terminate_instances,
)
from harness.cli.instances.volumes import register_volumes


def register_events(sub: argparse._SubParsersAction) -> None:
    """The scheduled events' commands, then describe-instance-status that lists them."""
    register_scheduled_events(sub)
    register_describe_instance_status(sub)


__all__ = [
    "register_create_image",
    "register_describe_instances",
    "register_events",
    "register_get_console_output",
    "register_key_pairs",
    "register_modify_instance_attribute",
    "register_reboot_instances",
    "register_run_instances",
    "register_ssh",
    "register_start_instances",
    "register_stop_instances",
    "register_terminate_instances",
    "register_volumes",
]
