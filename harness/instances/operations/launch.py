"""RunInstances, StartInstances and RebootInstances: what makes an instance and what sets
its supervisor going again."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BadInput
from builder.ids import random_id
from builder.images import volumes
from builder.images.records import ImageRecord, now_iso
from builder.images.registry import Registry
from builder.images.tables import Row
from harness.instances import addresses, events, hibernation, keypairs, launch_images, store
from harness.instances.operations.common import (
    acting_account,
    current_states,
    owner_of_instance,
    public,
    signal_supervisor,
    transition,
    wait_for,
)
from harness.instances.operations.stop import terminate_instances
from harness.launch import instance as launch_dirs
from harness.launch import keys
from harness.launch.request import LaunchRequest
from harness.launch.types import check_image, default_type, instance_type

SHUTDOWN_BEHAVIOURS = ("stop", "terminate")
MAX_COUNT = 20


@dataclass(kw_only=True)
class RunRequest(LaunchRequest):
    """RunInstances: the launch settings and what only a long-lived launch takes."""

    image: str
    count: int = 1
    key_name: str | None = None
    placement: str = volumes.DEFAULT_ZONE
    shutdown_behavior: str = "stop"
    disable_api_termination: bool = False
    disable_api_stop: bool = False
    block_device_mappings: list[dict[str, Any]] = field(default_factory=list)
    spot_interruption_after: float | None = None
    spot_action: str = "terminate"
    spot_notice: float = 120.0  # EC2 announces an interruption two minutes ahead
    scheduled_events: list[dict[str, Any]] = field(default_factory=list)  # events.new_event
    hibernation_configured: bool = False  # HibernationOptions.Configured: may hibernate


def _spawn(iid: str) -> None:
    """Start the instance's supervisor, detached from this command (its own session, no
    terminal), and record which process it is."""
    log = launch_dirs.instance_logs() / f"{iid}.supervisor.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[3])  # holds harness/: the supervisor runs this tree
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env["AMILAB_ACCOUNT_ID"] = owner_of_instance(store.find(iid))  # its identity document's
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.instances.supervisor", iid],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
            start_new_session=True, cwd="/",
        )  # fmt: skip
    start = store.process_start(proc.pid)

    def change(r: Row) -> None:
        r["Amilab"]["Supervisor"] = {"Pid": proc.pid, "Start": start}
        r["Amilab"].pop("Launcher", None)  # launched: the supervisor owns it now

    store.instances().update(iid, change)


def _launch_settings(req: RunRequest, bus: str | None) -> dict[str, Any]:
    md = dict(req.metadata)
    md.pop("instance_type", None)
    if isinstance(md.get("user_data"), bytes):
        md["user_data_b64"] = base64.b64encode(md.pop("user_data")).decode()
    return {
        "Metadata": md,
        "Accel": req.accel,
        "DiskBus": bus,
        "Firmware": req.firmware,
        "Append": req.append,
        "OpenNetwork": req.open_network,
        "Layers": [str(Path(x).resolve()) for x in req.layers],
    }


def _root_size(image: ImageRecord) -> int:
    for m in image.block_device_mappings:
        if m.get("DeviceName") == image.root_device_name and "Ebs" in m:
            return int(m["Ebs"].get("VolumeSize") or 1)
    return 1


def parse_block_device_mapping(text: str) -> dict[str, Any]:
    """The aws CLI's shorthand: DEVICE=ephemeralN | DEVICE=none | DEVICE=[snap-…]:[size]
    [:true|false], or DeviceName=…,Ebs={…} is not taken here (JSON is: `[{...}]`)."""

    text = text.strip()
    if text.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise BadInput(f"--block-device-mapping: not JSON: {e}") from None
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(i, dict) and "DeviceName" in i for i in items):
            raise BadInput("--block-device-mapping: each mapping needs a DeviceName")
        return {"Many": items}
    device, sep, what = text.partition("=")
    if not sep or not device.startswith("/dev/"):
        raise BadInput(f"--block-device-mapping {text!r}: expected /dev/NAME=…")
    if what == "none":
        return {"DeviceName": device, "NoDevice": ""}
    if what.startswith("ephemeral"):
        return {"DeviceName": device, "VirtualName": what}
    parts = what.split(":")
    ebs: dict[str, Any] = {}
    if parts[0]:
        ebs["SnapshotId"] = parts[0]
    if len(parts) > 1 and parts[1]:
        try:
            ebs["VolumeSize"] = int(parts[1])
        except ValueError:
            raise BadInput(f"--block-device-mapping {text!r}: size must be GiB") from None
    if len(parts) > 2 and parts[2]:
        ebs["DeleteOnTermination"] = parts[2].lower() == "true"
    if not ebs:
        raise BadInput(f"--block-device-mapping {text!r}: give a snapshot or a size")
    return {"DeviceName": device, "Ebs": ebs}


def _mappings(req: RunRequest, image: ImageRecord) -> list[dict[str, Any]]:
    """The image's mapping with the launch's changes (by device name), as EC2 merges them."""
    merged: dict[str, dict[str, Any]] = {}
    for m in image.block_device_mappings:
        merged[m["DeviceName"]] = {**m, "Ebs": dict(m["Ebs"])} if "Ebs" in m else dict(m)
    for m in req.block_device_mappings:
        for item in m.get("Many", [m]):
            dev = item["DeviceName"]
            if "Ebs" in item and dev in merged and "Ebs" in merged[dev]:
                merged[dev] = {**merged[dev], "Ebs": {**merged[dev]["Ebs"], **item["Ebs"]}}
            else:
                merged[dev] = dict(item)
    return list(merged.values())


def run_instances(req: RunRequest, say: Any = None) -> dict[str, Any]:
    """RunInstances: validated first (nothing is made for a launch EC2 would refuse), then
    per instance a root volume over the image's snapshot, the other mapped volumes, an
    address, a directory and a supervisor. Returns the reservation, instances pending."""
    if not 1 <= req.count <= MAX_COUNT:
        raise BadInput(f"InvalidParameterValue: --count {req.count}: 1-{MAX_COUNT} here")
    if req.shutdown_behavior not in SHUTDOWN_BEHAVIOURS:
        raise BadInput(
            f"InvalidParameterValue: --instance-initiated-shutdown-behavior "
            f"{req.shutdown_behavior!r}: stop or terminate"
        )
    registry = Registry()
    try:
        image = registry.find(req.image, "machine")
    except BadInput as e:
        raise BadInput(f"InvalidAMIID.NotFound: {e}") from None
    if image.state != "available":
        raise BadInput(f"InvalidAMIID.Unavailable: {image.image_id} is {image.state}")
    if image.root_device_type != "ebs":
        raise BadInput(
            f"UnsupportedOperation: {image.image_id} is instance-store backed; run-instances "
            "here launches EBS-backed images (use boot/smoke for bundles)"
        )
    itype = instance_type(req.instance_type or default_type(image.architecture))

    check_image(itype, image.architecture, image.virtualization_type or "hvm")
    key = keypairs.find_key_pair(req.key_name) if req.key_name else None
    bus = req.disk_bus if req.disk_bus != "virtio" else None
    plan = req.plan(image, req.kernels[0] if req.kernels else None)  # refusals happen here
    if len(req.kernels) > 1:
        raise BadInput("--kernel: run-instances takes one kernel")
    mappings = _mappings(req, image)
    hibernation.check_launch(req.hibernation_configured, itype.memory_mib, itype.name,
                             hibernation.root_gib(mappings, image.root_device_name,
                                                  _root_size(image)))  # fmt: skip
    stores = [m for m in mappings if m.get("VirtualName", "").startswith("ephemeral")
              and "NoDevice" not in m]  # fmt: skip
    if len(stores) > len(itype.instance_store_gib):
        raise BadInput(
            f"InvalidBlockDeviceMapping: The instance type {itype.name} has "
            f"{len(itype.instance_store_gib)} instance store volume(s); "
            f"{len(stores)} were mapped"
        )
    for m in mappings:
        if "Ebs" in m and m["Ebs"].get("SnapshotId"):
            volumes.find_snapshot(m["Ebs"]["SnapshotId"])
    reservation = random_id("r")
    launched: list[Row] = []
    try:
        for index in range(req.count):
            launched.append(
                _launch_one(
                    req, image, itype, plan, key, bus, mappings, stores, index, reservation
                )  # fmt: skip
            )
            if say:
                say(f"{launched[-1]['InstanceId']} pending at {launched[-1]['PublicIpAddress']}")
    except BaseException:
        for rec in launched:
            _undo_launch(rec)
        raise
    return {
        "ReservationId": reservation,
        "OwnerId": acting_account(),
        "Instances": [public(store.find(r["InstanceId"])) for r in launched],
    }


def _launch_one(
    req: RunRequest,
    image: ImageRecord,
    itype: Any,
    plan: Any,
    key: Row | None,
    bus: str | None,
    mappings: list[dict[str, Any]],
    stores: list[dict[str, Any]],
    index: int,
    reservation: str,
) -> Row:
    iid = random_id("i")
    made_volumes: list[str] = []
    directory = store.instances_dir() / iid
    rec: Row | None = None
    try:
        directory.mkdir(parents=True, mode=0o700)
        if key is not None:
            public_key = key["PublicKey"]
        else:  # no key pair named: one of the instance's own, for `amilab ssh`
            _, public_key = keys.make_key_pair(directory, f"amilab-{iid}")
        now = now_iso()
        spot = None
        if req.spot_interruption_after is not None:
            at = time.time() + req.spot_interruption_after
            spot = {"Action": req.spot_action, "At": at, "NoticeAt": at - req.spot_notice,
                    "Time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}  # fmt: skip
        with store.locked("addresses"):
            address, ssh_port = addresses.allocate()
            rec = {
                "InstanceId": iid,
                "ImageId": image.image_id,
                "State": store.state("pending"),
                "StateTransitionReason": "",
                "LaunchTime": now,
                "InstanceType": itype.name,
                "KernelId": plan.kernel_id,
                "RamdiskId": plan.ramdisk_id,
                "Architecture": image.architecture,
                "VirtualizationType": image.virtualization_type,
                "Hypervisor": "xen",
                "Placement": {"AvailabilityZone": req.placement, "Tenancy": "default"},
                "KeyName": req.key_name,
                "RootDeviceName": image.root_device_name,
                "RootDeviceType": "ebs",
                "BlockDeviceMappings": [],
                "PublicIpAddress": address,
                "PrivateIpAddress": address,
                "PublicDnsName": addresses.dns_name(address),
                "PrivateDnsName": f"ip-{address.replace('.', '-')}.ec2.internal",
                "AmiLaunchIndex": index,
                "Tags": [
                    {"Key": k, "Value": v} for k, v in sorted(req.metadata.get("tags", {}).items())
                ],  # fmt: skip
                "InstanceLifecycle": "spot" if spot else None,
                "HibernationOptions": {"Configured": req.hibernation_configured},
                "Amilab": {
                    "OwnerId": acting_account(),  # the account that launched it (API: the signer's)
                    "Dir": str(directory),
                    "PublicKey": public_key,
                    "SshPort": ssh_port,
                    "ReservationId": reservation,
                    "ShutdownBehavior": req.shutdown_behavior,
                    "DisableApiTermination": req.disable_api_termination,
                    "DisableApiStop": req.disable_api_stop,
                    "Launch": _launch_settings(req, bus),
                    # its images as they are now: it still starts when they are deregistered
                    launch_images.KEY: launch_images.kept(image, plan.kernel, plan.ramdisk),
                    "InstanceStore": [],
                    "InstanceStoreDevices": [m["DeviceName"] for m in stores],
                    # recorded (pending) before its volumes are attached, owned by this
                    # process until its supervisor runs: a launch killed half-way leaves an
                    # instance that `reconcile` ends as terminated, releasing its volumes
                    "Launcher": {"Pid": os.getpid(), "Start": store.process_start(os.getpid())},
                    "Spot": spot,
                    # each instance its own events (their IDs are the instance's)
                    "Events": [
                        events.new_event(
                            e["Code"],
                            e["NotBefore"],
                            e["Description"],
                            e["NotAfter"] - e["NotBefore"],
                        )
                        for e in req.scheduled_events
                    ],
                },
            }
            if rec["InstanceLifecycle"] is None:
                del rec["InstanceLifecycle"]
            store.instances().insert(iid, rec)
        for m in mappings:
            if "Ebs" not in m or "NoDevice" in m:
                continue
            ebs = m["Ebs"]
            is_root = m["DeviceName"] == image.root_device_name
            if is_root:
                snap = volumes.image_snapshot(image)
                size = max(int(ebs.get("VolumeSize") or 0), _root_size(image))
                vol = volumes.create_volume(size, snap["SnapshotId"], req.placement)
            else:
                vol = volumes.create_volume(
                    ebs.get("VolumeSize"), ebs.get("SnapshotId") or None, req.placement
                )
            made_volumes.append(vol["VolumeId"])
            delete = bool(ebs.get("DeleteOnTermination", True))
            mapping = {"DeviceName": m["DeviceName"], "Ebs": {
                "VolumeId": vol["VolumeId"], "Status": "attached", "AttachTime": now,
                "DeleteOnTermination": delete}}  # fmt: skip
            # the instance names the volume before the volume names the instance
            store.instances().update(iid, lambda r, m=mapping: r["BlockDeviceMappings"].append(m))
            volumes.attach(vol["VolumeId"], iid, m["DeviceName"], delete)
        store_paths = []
        for i in range(len(stores)):
            path = directory / f"ephemeral{i}.qcow2"
            from builder.disk import qemu_img

            qemu_img.create(path, "qcow2", size=itype.instance_store_gib[i] * volumes.GIB)
            store_paths.append(str(path))
        with store.locked(iid):  # a describe meanwhile waits for the supervisor's PID

            def launched(r: Row) -> None:
                r["Amilab"]["InstanceStore"] = store_paths

            rec = store.instances().update(iid, launched)
            _spawn(iid)
        return rec
    except BaseException:
        for vid in made_volumes:
            _drop_volume(vid)
        if rec is not None:
            store.instances().delete(iid)
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _drop_volume(volume_id: str) -> None:
    with contextlib.suppress(BadInput):
        volumes.detach(volume_id)
    with contextlib.suppress(BadInput):
        volumes.delete_volume(volume_id)


def _undo_launch(rec: Row) -> None:
    """A launch that failed for a later instance of the same request: end this one too."""
    with contextlib.suppress(Exception):  # best effort; the record says what remains
        # the request's termination protection does not hold for its own failure
        store.instances().update(rec["InstanceId"], lambda r: r["Amilab"].update(
            DisableApiTermination=False, DisableApiStop=False))  # fmt: skip
        terminate_instances([rec["InstanceId"]], wait=True)


def start_instances(ids: list[str], wait: bool = False, timeout: float = 120) -> list[dict]:
    out = []
    for rec, prev in current_states(ids):
        iid = rec["InstanceId"]
        if prev in ("terminated", "shutting-down", "stopping"):
            raise BadInput(
                f"IncorrectInstanceState: The instance '{iid}' is not in a state from which "
                f"it can be started ({prev})"
            )
        with store.locked(iid):
            if prev == "stopped":
                _readdress(iid)
                rec = store.instances().update(iid, lambda r: store.set_state(r, "pending"))
                _spawn(iid)
        if wait:
            rec = wait_for(iid, ("running",), timeout)
        out.append(transition(store.find(iid), prev))
    return out


def _readdress(iid: str) -> None:
    """A stopped instance holds no socket, so its address may have been taken meanwhile
    (by an instance of another AMILAB_HOME): then it starts with a new one, as an EC2
    instance without an Elastic IP gets a new public address at every start."""
    with store.locked("addresses"):
        rec = store.find(iid)
        old, port = rec["PublicIpAddress"], int(rec["Amilab"].get("SshPort") or 22)
        if addresses.bindable(old, port):
            return
        address, ssh_port = addresses.allocate()

        def change(r: Row) -> None:
            r["PublicIpAddress"] = r["PrivateIpAddress"] = address
            r["PublicDnsName"] = addresses.dns_name(address)
            r["PrivateDnsName"] = f"ip-{address.replace('.', '-')}.ec2.internal"
            r["Amilab"]["SshPort"] = ssh_port

        store.instances().update(iid, change)


def reboot_instances(ids: list[str]) -> None:
    for rec, prev in current_states(ids):
        iid = rec["InstanceId"]
        if prev != "running":
            raise BadInput(f"IncorrectInstanceState: The instance '{iid}' is {prev}, not running")
        with store.locked(iid):
            signal_supervisor(rec, signal.SIGHUP)
