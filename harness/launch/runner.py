"""`amilab boot IMAGE --runner FILE.pyz`: qemu-runner's self-contained runner for an image.

The runner embeds the same layers the harness composes (profile, accelerator, network) plus
one layer for the image, so the long command line can be shared and run where amilab is not
installed. What layers cannot carry goes into `FILE.pyz.d/` beside it: the metadata service
(`imds_cgi.py` needs only Python's standard library), its document and the instance's key.

What qemu-runner cannot express, and how the runner copes:
- it insists on a kernel as its positional argument, so a paravirtual runner is started as
  `python3 FILE.pyz <the AKI's vmlinuz>` (the command line and ramdisk are embedded), and an
  HVM runner, which has no kernel to give, only through `--dry-run`:
  `sh -c "$(python3 FILE.pyz --dry-run)"`;
- it only runs QEMU: no QMP shutdown, no SSH wait, no console watching (that is `amilab smoke`);
- it runs one QEMU, so slirp stays inside the guest's QEMU and each metadata request starts
  `imds_cgi.py` from there (launches split the network off and relay through netcat, which
  is cheaper per request: see `harness.launch.machine.split_network`).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from qemu_runner.make_runner.make import make_runner

from builder.errors import BadInput
from builder.ids import random_id
from harness.imds import PROTOCOL_SCRIPT, SCRIPT_NAME
from harness.imds.document import InstanceMetadata, write_document
from harness.launch import keys
from harness.launch.accel import Accelerator
from harness.launch.machine import GUEST_IP, MachineSpec, launch_layer, layer_text
from harness.launch.plan import LaunchPlan

RUNNER_SSH_PORT = 2222


def write_runner(
    plan: LaunchPlan,
    accelerator: Accelerator,
    out: Path,
    ssh_port: int = RUNNER_SSH_PORT,
    metadata: dict[str, Any] | None = None,
) -> list[str]:
    """Write the runner and its side directory; returns the lines telling how to use it."""
    out = out.resolve()
    side = out.with_name(out.name + ".d")
    if " " in str(side):
        raise BadInput(f"{out}: slirp's guestfwd command cannot take paths with spaces")
    side.mkdir(parents=True, exist_ok=True)
    instance_id = random_id("i")
    key_path, public = keys.make_key_pair(side, f"amilab-{instance_id}")
    md = InstanceMetadata(
        ami_id=plan.image.image_id,
        instance_id=instance_id,
        public_key=public,
        key_name=f"amilab-{instance_id}",
        kernel_id=plan.kernel_id,
        ramdisk_id=plan.ramdisk_id,
        local_ipv4=GUEST_IP,
        **(metadata or {}),
    )
    doc = write_document(md, side / "metadata.marshal")
    cgi = side / SCRIPT_NAME
    shutil.copy(PROTOCOL_SCRIPT, cgi)
    spec = MachineSpec(
        profile=plan.profile,
        accelerator=accelerator,
        disk=plan.disk,
        # the kernel is the runner's positional argument; the layer keeps the rest
        ramdisk=Path(plan.ramdisk.image_location) if plan.ramdisk else None,
        cmdline=plan.cmdline,
        ssh_port=ssh_port,
        imds_command=f"python3 -I -S {cgi} {doc}",
        instance_id=md.instance_id,
        instance_type=md.instance_type,
        architecture=plan.machine_architecture,
    )
    image_layer = launch_layer(spec)
    if plan.kernel is not None:
        # launch_layer writes -initrd only with a kernel; the runner's kernel comes later
        image_layer += _paravirtual_extra(spec)
    image_layer += "[serial]\n@ = mon:stdio\n\n"
    layers = [layer_text(n) for n in spec.layer_names()] + [image_layer]
    with open(out, "wb") as f:
        make_runner(
            f, layer_contents=layers, additional_script_bases=[], additional_search_paths=[]
        )
    out.chmod(0o755)
    ssh = shlex.join(
        [
            "ssh",
            "-i",
            str(key_path),
            "-p",
            str(ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "root@127.0.0.1",
        ]  # fmt: skip
    )
    if plan.kernel is not None:
        run = f"python3 {shlex.quote(str(out))} {shlex.quote(plan.kernel.image_location)}"
    else:
        run = f'sh -c "$(python3 {shlex.quote(str(out))} --dry-run)"'
    return [
        f"runner: {out} (metadata service, document and key in {side})",
        f"run:    {run}",
        f"ssh:    {ssh}",
        "console: QEMU's stdio (Ctrl-a x quits)",
    ]


def _paravirtual_extra(spec: MachineSpec) -> str:
    out = ""
    if spec.ramdisk is not None:
        out += f"[initrd]\n@ = {spec.ramdisk}\n\n"
    if spec.cmdline:
        out += "[general]\ncmdline = " + spec.cmdline.replace("%", "%%") + "\n\n"
    return out
