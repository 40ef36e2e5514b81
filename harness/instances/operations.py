"""EC2's instance operations over the registry and the supervisors: run, describe, stop,
start, reboot, terminate, console output, attach/detach, create-image. The CLI and the API
server call these; each returns AWS-shaped data and refuses with EC2's error code (exit 2).

Each operation on an instance holds that instance's lock, so concurrent commands on one
instance run one after the other. Whatever a describe reads is first made true: an
instance whose supervisor is gone (killed, crashed, the host rebooted) is recorded stopped
with the reason, and any QEMU of it still alive is killed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import BadInput
from builder.ids import random_id
from builder.images import factory, volumes
from builder.images.records import ImageRecord, now_iso
from builder.images.registry import Registry
from builder.images.tables import Row
from harness.instances import addresses, attributes, events, hibernation, hotplug, keypairs, store
from harness.instances.types import default_type, instance_type
from harness.launch import instance as launch_dirs
from harness.launch import keys
from harness.launch.request import LaunchRequest

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


# ------------------------------------------------------------------ supervision


def _supervisor_alive(rec: Row) -> bool:
    sup = rec["Amilab"].get("Supervisor") or {}
    return store.same_process(sup.get("Pid"), sup.get("Start"))


def _kill_leftovers(rec: Row) -> None:
    a = rec["Amilab"]
    for key in ("QemuPid", "NetworkPid"):
        pid = a.get(key)
        if pid and store.process_start(pid) is not None:
            try:
                if Path(f"/proc/{pid}/cwd").resolve() == Path(a["Dir"]).resolve():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def reconcile(rec: Row) -> Row:
    """The record made true: a supervised state with no supervisor behind it is stopped
    (terminated, if it was on its way there), with EC2's StateReason saying why."""
    if rec["State"]["Name"] not in store.SUPERVISED or _supervisor_alive(rec):
        return rec
    with store.locked(rec["InstanceId"]):
        rec = _reconcile_locked(rec["InstanceId"])
    if rec["State"]["Name"] == "terminated":
        release_terminated(rec)
    return rec


def _reconcile_locked(iid: str) -> Row:
    """`reconcile` for a caller that holds the instance's lock."""
    settled: list[tuple[str, str]] = []

    def change(r: Row) -> None:
        if r["State"]["Name"] not in store.SUPERVISED:
            # a request recorded as its supervisor was finishing: no QEMU will carry it out
            settled.extend(hotplug.settle(r))
            return
        if _supervisor_alive(r):
            return
        _kill_leftovers(r)
        hibernation.drop_partial(r)  # a save its supervisor did not finish
        pid = (r["Amilab"].get("Supervisor") or {}).get("Pid")
        end = "terminated" if r["State"]["Name"] == "shutting-down" else "stopped"
        store.set_state(r, end, (
            "Server.InternalError",
            f"Server.InternalError: the instance's supervisor (pid {pid}) ended without "
            "stopping it; its QEMU died with it",
        ))  # fmt: skip
        r["Amilab"].update(Supervisor=None, QemuPid=None, NetworkPid=None, Desired=None)
        settled.extend(hotplug.settle(r))  # no guest holds a device any more

    rec = store.instances().update(iid, change)
    hotplug.settle_volumes(iid, settled)
    return rec


def _spawn(iid: str) -> None:
    """Start the instance's supervisor, detached from this command (its own session, no
    terminal), and record which process it is."""
    log = launch_dirs.instance_logs() / f"{iid}.supervisor.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
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

    store.instances().update(iid, change)


# --------------------------------------------------------------------- run


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
    import json

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
    from harness.instances.types import check_image

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
        "OwnerId": _owner(),
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
        bdm: list[dict[str, Any]] = []
        now = now_iso()
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
            volumes.attach(vol["VolumeId"], iid, m["DeviceName"], delete)
            bdm.append({"DeviceName": m["DeviceName"], "Ebs": {
                "VolumeId": vol["VolumeId"], "Status": "attached", "AttachTime": now,
                "DeleteOnTermination": delete}})  # fmt: skip
        store_paths = []
        for i in range(len(stores)):
            path = directory / f"ephemeral{i}.qcow2"
            from builder.disk import qemu_img

            qemu_img.create(path, "qcow2", size=itype.instance_store_gib[i] * volumes.GIB)
            store_paths.append(str(path))
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
                "BlockDeviceMappings": bdm,
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
                    "OwnerId": _owner(),  # the account that launched it (API: the signer's)
                    "Dir": str(directory),
                    "PublicKey": public_key,
                    "SshPort": ssh_port,
                    "ReservationId": reservation,
                    "ShutdownBehavior": req.shutdown_behavior,
                    "DisableApiTermination": req.disable_api_termination,
                    "DisableApiStop": req.disable_api_stop,
                    "Launch": _launch_settings(req, bus),
                    "InstanceStore": store_paths,
                    "InstanceStoreDevices": [m["DeviceName"] for m in stores],
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
            with store.locked(iid):  # a describe meanwhile waits for the supervisor's PID
                store.instances().insert(iid, rec)
                _spawn(iid)
        return rec
    except BaseException:
        if rec is not None:
            store.instances().delete(iid)
        for vid in made_volumes:
            _drop_volume(vid)
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


# ------------------------------------------------------------------- describe


def public(rec: Row) -> Row:
    """The AWS shape, plus where the instance's SSH really is: port 22 of its address,
    unless the host's own sshd holds port 22 of every address (then another port; EC2's
    shape has no field for it, so amilab's own key says it)."""
    out = {k: v for k, v in rec.items() if k != "Amilab"}
    out["HibernationOptions"] = hibernation.options(rec)  # also for records from before it
    out["amilab:SshPort"] = int(rec.get("Amilab", {}).get("SshPort") or 22)
    return out


def _matches(rec: Row, filters: dict[str, list[str]]) -> bool:
    for name, values in filters.items():
        if name == "instance-id":
            got = [rec["InstanceId"]]
        elif name == "image-id":
            got = [rec["ImageId"]]
        elif name == "instance-state-name":
            got = [rec["State"]["Name"]]
        elif name == "instance-type":
            got = [rec["InstanceType"]]
        elif name == "key-name":
            got = [rec.get("KeyName") or ""]
        elif name.startswith("tag:"):
            got = [t["Value"] for t in rec.get("Tags", []) if t["Key"] == name[4:]]
        elif name == "tag-key":
            got = [t["Key"] for t in rec.get("Tags", [])]
        else:
            raise BadInput(f"InvalidParameterValue: The filter '{name}' is invalid")
        if not any(g in values for g in got):
            return False
    return True


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """`Name=instance-state-name,Values=running,stopped` (the aws CLI's shorthand) or
    `instance-state-name=running,stopped`."""
    out: dict[str, list[str]] = {}
    for item in items:
        if item.startswith("Name="):
            name, _, values = item[5:].partition(",Values=")
        else:
            name, _, values = item.partition("=")
        if not name or not values:
            raise BadInput(f"--filters {item!r}: expected Name=NAME,Values=V1,V2")
        out.setdefault(name, []).extend(values.split(","))
    return out


def describe_instances(
    ids: list[str] | None = None, filters: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    recs = [store.find(i) for i in ids] if ids else store.instances().list()
    recs = [reconcile(r) for r in recs]
    reservations: dict[str, dict[str, Any]] = {}
    for r in recs:
        if not _matches(r, filters or {}):
            continue
        rid = r["Amilab"].get("ReservationId", "r-0")
        res = reservations.setdefault(
            rid, {"ReservationId": rid, "OwnerId": owner_of_instance(r), "Instances": []}
        )
        res["Instances"].append(public(r))
    return {"Reservations": list(reservations.values())}


def _owner() -> str:
    from builder.images.shapes import account_id

    return account_id()


def owner_of_instance(rec: Row) -> str:
    """Who launched it; instances launched before owners were kept are the local account's."""
    from builder.images.shapes import local_account_id

    return str(rec["Amilab"].get("OwnerId") or local_account_id())


# ---------------------------------------------------------------- state changes


def _change(ids: list[str], what: str) -> list[tuple[Row, str]]:
    """(record now, previous state name) for each ID, all checked before any is touched."""
    recs = [reconcile(store.find(i)) for i in ids]
    return [(r, r["State"]["Name"]) for r in recs]


def wait_for(instance_id: str, states: tuple[str, ...], timeout: float) -> Row:
    deadline = time.monotonic() + timeout
    while True:
        rec = reconcile(store.find(instance_id))
        if rec["State"]["Name"] in states:
            return rec
        if time.monotonic() > deadline:
            raise BadInput(
                f"{instance_id} is {rec['State']['Name']}, not {'/'.join(states)}, "
                f"after {timeout:.0f} s"
            )
        time.sleep(0.2)


def _signal_supervisor(rec: Row, sig: int) -> bool:
    sup = rec["Amilab"].get("Supervisor") or {}
    if not store.same_process(sup.get("Pid"), sup.get("Start")):
        return False
    try:
        os.kill(sup["Pid"], sig)
    except ProcessLookupError:
        return False
    return True


def _transition(rec: Row, previous: str) -> dict[str, Any]:
    return {
        "InstanceId": rec["InstanceId"],
        "CurrentState": rec["State"],
        "PreviousState": store.state(previous),
    }


def stop_instances(
    ids: list[str],
    wait: bool = False,
    timeout: float = 120,
    force: bool = False,
    hibernate: bool = False,
) -> list[dict]:
    """StopInstances: the ACPI power button, QEMU ended after AMILAB_STOP_TIMEOUT seconds if
    the guest has not shut down; `force` (EC2's --force) ends it at once, no shutdown;
    `hibernate` saves the guest's RAM for the next start (harness.instances.hibernation)."""
    out = []
    recs = _change(ids, "stop")
    for rec, prev in recs:
        if prev in ("pending", "running"):
            attributes.refuse_if_protected(rec, "stopped")
        if hibernate:
            hibernation.refuse_stop(rec, prev, force)
    for rec, prev in recs:
        iid = rec["InstanceId"]
        if prev == "terminated":
            raise BadInput(f"IncorrectInstanceState: The instance '{iid}' is terminated")
        with store.locked(iid):
            if prev in ("pending", "running"):

                def change(r: Row) -> None:
                    why = hibernation.HIBERNATE if hibernate else store.USER_SHUTDOWN
                    store.set_state(r, "stopping", why)
                    r["Amilab"]["Desired"] = hibernation.DESIRED if hibernate else "stop"
                    r["Amilab"]["Force"] = force

                rec = store.instances().update(iid, change)
                _signal_supervisor(rec, signal.SIGTERM)
        rec = reconcile(store.find(iid))
        if wait:  # a hibernation that fails ends running: said, exit 2
            rec = wait_for(iid, ("stopped",) + (("running",) if hibernate else ()), timeout)
            hibernation.refuse_if_failed(rec)
        out.append(_transition(rec, prev))
    return out


def start_instances(ids: list[str], wait: bool = False, timeout: float = 120) -> list[dict]:
    out = []
    for rec, prev in _change(ids, "start"):
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
        out.append(_transition(store.find(iid), prev))
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
    for rec, prev in _change(ids, "reboot"):
        iid = rec["InstanceId"]
        if prev != "running":
            raise BadInput(f"IncorrectInstanceState: The instance '{iid}' is {prev}, not running")
        with store.locked(iid):
            _signal_supervisor(rec, signal.SIGHUP)


def terminate_instances(ids: list[str], wait: bool = False, timeout: float = 120) -> list[dict]:
    out = []
    recs = _change(ids, "terminate")
    for rec, prev in recs:  # all refused before any is touched, as EC2 does
        if prev != "terminated":
            attributes.refuse_if_protected(rec, "terminated")
    for rec, prev in recs:
        iid = rec["InstanceId"]
        with store.locked(iid):
            if prev in store.SUPERVISED:

                def change(r: Row) -> None:
                    store.set_state(r, "shutting-down", store.USER_SHUTDOWN)
                    r["Amilab"]["Desired"] = "terminate"

                rec = store.instances().update(iid, change)
                if not _signal_supervisor(rec, signal.SIGTERM):
                    rec = reconcile(rec)
            elif prev == "stopped":

                def ended(r: Row) -> None:
                    store.set_state(r, "terminated", store.USER_SHUTDOWN)

                rec = store.instances().update(iid, ended)
                release_terminated(rec)
        if wait:
            rec = wait_for(iid, ("terminated",), timeout)
        out.append(_transition(store.find(iid), prev))
    return out


def release_terminated(rec: Row) -> None:
    """What a terminated instance gives back: volumes mapped with DeleteOnTermination are
    deleted, the others detached (they stay, available); its directory goes. Idempotent."""
    hibernation.discard(rec)  # a hibernated instance's saved RAM goes with it
    for m in rec.get("BlockDeviceMappings", []):
        vid = m["Ebs"]["VolumeId"]
        if volumes.volumes().get(vid) is None:
            continue
        with contextlib.suppress(BadInput):
            volumes.detach(vid)
        if m["Ebs"].get("DeleteOnTermination"):
            with contextlib.suppress(BadInput):
                volumes.delete_volume(vid)
    shutil.rmtree(rec["Amilab"]["Dir"], ignore_errors=True)


# ------------------------------------------------------------ scheduled events


def _events_changed(iid: str, change: Any) -> Row:
    """Change an instance's events under its lock, then tell a running supervisor (it
    serves them and carries them out; one still starting reads them when it runs)."""
    with store.locked(iid):
        rec = store.instances().update(iid, change, "InvalidInstanceID.NotFound")
        if rec["State"]["Name"] == "running":
            _signal_supervisor(rec, signal.SIGUSR1)
    return rec


def schedule_instance_event(
    instance_id: str, code: str, not_before: float, description: str | None = None,
    window: float = events.DEFAULT_WINDOW,
) -> dict[str, Any]:  # fmt: skip
    """What AWS does when it schedules maintenance (no public API): an event on an instance
    that is pending or running."""
    rec = reconcile(store.find(instance_id))
    if rec["State"]["Name"] not in ("pending", "running"):
        raise BadInput(
            f"IncorrectInstanceState: The instance '{instance_id}' is {rec['State']['Name']}; "
            "events are scheduled for pending or running instances"
        )
    if not_before < time.time():
        raise BadInput("InvalidParameterValue: The event start time must be in the future")
    event = events.new_event(code, not_before, description, window)

    def change(r: Row) -> None:
        r["Amilab"].setdefault("Events", []).append(event)

    _events_changed(instance_id, change)
    return events.api_shape(event)


def modify_instance_event_start_time(
    instance_id: str, event_id: str, not_before: float
) -> dict[str, Any]:
    """ModifyInstanceEventStartTime."""
    reconcile(store.find(instance_id))
    moved: list[Row] = []

    def change(r: Row) -> None:
        for e in r["Amilab"].get("Events") or []:
            if e["EventId"] == event_id:
                events.reschedule(e, not_before, time.time())
                moved.append(e)
        if not moved:
            raise BadInput(
                f"InvalidInstanceEventID.NotFound: The event ID '{event_id}' does not exist "
                f"for instance {instance_id}"
            )

    _events_changed(instance_id, change)
    return {"Event": events.api_shape(moved[0])}


def event_shapes(rec: Row) -> list[dict[str, Any]]:
    """An instance's events as describe-instance-status lists them (completed for a week)."""
    shown = events.recent(rec.get("Amilab", {}).get("Events") or [], time.time())
    return [events.api_shape(e) for e in sorted(shown, key=lambda e: e["NotBefore"])]


def status_check(rec: Row) -> dict[str, Any]:
    """EC2's InstanceStatus/SystemStatus for a record: `initializing` from launch (and each
    start) until the guest has answered, then `ok`; `not-applicable` when it is not running.
    The supervisor writes `Amilab.Reachable` when the guest's SSH banner reaches its port or
    the guest asks the metadata service (see harness.instances.supervisor); a record without
    the key was written by a supervisor from before it kept one: running counts as ok."""
    name = rec["State"]["Name"]
    if name not in ("pending", "running"):
        return {"Status": "not-applicable"}
    a = rec.get("Amilab") or {}
    ok = name == "running" and ("Reachable" not in a or bool(a["Reachable"]))
    detail = "passed" if ok else "initializing"
    return {
        "Status": "ok" if ok else "initializing",
        "Details": [{"Name": "reachability", "Status": detail}],
    }


def describe_instance_status(
    ids: list[str] | None = None, include_all: bool = False
) -> dict[str, Any]:
    """DescribeInstanceStatus: running instances (all with `include_all`), their scheduled
    events (completed ones for a week, described "[Completed] …") and status checks
    (`status_check`)."""
    recs = [store.find(i) for i in ids] if ids else store.instances().list()
    out = []
    for r in (reconcile(r) for r in recs):
        name = r["State"]["Name"]
        if name != "running" and not include_all:
            continue
        if name == "terminated" and not ids:
            continue
        out.append({
            "AvailabilityZone": r["Placement"]["AvailabilityZone"],
            "InstanceId": r["InstanceId"],
            "Events": event_shapes(r),
            "InstanceState": r["State"],
            "InstanceStatus": status_check(r),
            "SystemStatus": status_check(r),
        })  # fmt: skip
    return {"InstanceStatuses": out}


# -------------------------------------------------------------- console, ssh


def console_output(instance_id: str, latest: bool = True) -> dict[str, Any]:
    rec = reconcile(store.find(instance_id))
    log = launch_dirs.instance_logs() / f"{instance_id}.console.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    return {
        "InstanceId": instance_id,
        "Timestamp": now_iso(),
        "Output": text if latest else text[-64 * 1024 :],
        "State": rec["State"]["Name"],
    }


def ssh_target(instance_id: str) -> tuple[str, int, Path | None]:
    """(address, SSH port, the instance's own private key when it has one)."""
    rec = reconcile(store.find(instance_id))
    if rec["State"]["Name"] != "running":
        raise BadInput(
            f"IncorrectInstanceState: {instance_id} is {rec['State']['Name']}, not running"
        )
    key = Path(rec["Amilab"]["Dir"]) / "id_ed25519"
    port = int(rec["Amilab"].get("SshPort") or 22)
    return rec["PublicIpAddress"], port, key if key.exists() else None


# ------------------------------------------------------------ volumes on instances

ATTACH_WAIT = 60.0  # seconds a command waits for the supervisor to plug a device


def _device_free(rec: Row, device: str) -> None:
    taken = [m["DeviceName"] for m in rec["BlockDeviceMappings"]]
    taken += rec["Amilab"].get("InstanceStoreDevices") or []
    if device in taken or device == rec["RootDeviceName"]:
        raise BadInput(
            f"InvalidParameterValue: Invalid value '{device}' for unixDevice. "
            f"Attachment point {device} is already in use"
        )


def _refuse_hotplug(rec: Row, what: str) -> None:
    """What cannot change while the guest runs here: QEMU's arm64 `virt` board has no
    hot-plug slots in amilab's launch; IDE disks cannot be hot-plugged, and a SCSI disk's
    hot-plug is not done here."""
    bus = rec["Amilab"]["Launch"].get("DiskBus")
    if rec.get("Architecture") == "arm64" or bus in ("ide", "scsi"):
        why = "arm64 instances" if rec.get("Architecture") == "arm64" else f"{bus} disks"
        raise BadInput(
            f"UnsupportedOperation: {what} while {rec['InstanceId']} is running is not "
            f"supported here ({why} have no hot-plug); stop the instance first"
        )


def _await_hotplug(iid: str, volume_id: str, what: str, timeout: float) -> None:
    """Wait (holding the instance's lock) until the supervisor has carried out the request:
    done, or its error raised as one line (exit 2). A supervisor that dies meanwhile leaves
    the instance stopped, the request settled (`hotplug.settle`)."""
    deadline = time.monotonic() + timeout
    while True:
        rec = store.find(iid)
        req = (rec["Amilab"].get("Hotplug") or {}).get(volume_id)
        if req is None:
            return
        if req.get("Error"):
            message = _take_error(iid, volume_id)
            raise BadInput(message or f"IncorrectState: the {what} of {volume_id} failed")
        if not _supervisor_alive(rec):
            _reconcile_locked(iid)
            continue
        if time.monotonic() > deadline:
            raise BadInput(
                f"IncorrectState: {iid}'s supervisor has not carried out the {what} of "
                f"{volume_id} within {timeout:.0f} s; describe-volumes shows how it ends"
            )
        time.sleep(0.1)


def _take_error(iid: str, volume_id: str) -> str | None:
    taken: list[str | None] = []
    store.instances().update(iid, lambda r: taken.append(hotplug.take_error(r, volume_id)))
    return taken[0]


def attach_volume(
    volume_id: str, instance_id: str, device: str, timeout: float = ATTACH_WAIT
) -> dict[str, Any]:
    """AttachVolume, to a stopped instance (its next start has the disk) or a running one:
    the supervisor hot-plugs the device (`attaching` until the guest has it, then
    `attached`), which the instance keeps across stops and reboots."""
    if not device.startswith("/dev/"):
        raise BadInput(f"InvalidParameterValue: Invalid value '{device}' for unixDevice")
    reconcile(store.find(instance_id))
    with store.locked(instance_id):
        rec = store.find(instance_id)
        state = rec["State"]["Name"]
        if state not in ("stopped", "running"):
            raise BadInput(
                f"IncorrectInstanceState: The instance '{instance_id}' is not 'running' "
                f"or 'stopped' (it is {state})"
            )
        _device_free(rec, device)
        zone = rec["Placement"]["AvailabilityZone"]
        if state == "stopped":
            vol = volumes.attach(volume_id, instance_id, device, False, zone=zone)

            def change(r: Row) -> None:
                r["BlockDeviceMappings"].append({"DeviceName": device, "Ebs": {
                    "VolumeId": volume_id, "Status": "attached", "AttachTime": now_iso(),
                    "DeleteOnTermination": False}})  # fmt: skip

            store.instances().update(instance_id, change)
            return vol["Attachments"][0]
        _refuse_hotplug(rec, f"attaching {volume_id}")
        volumes.attach(volume_id, instance_id, device, False, "attaching", zone)
        rec = store.instances().update(
            instance_id, lambda r: hotplug.want_attach(r, volume_id, device, now_iso())
        )
        _signal_supervisor(rec, signal.SIGUSR2)  # a dead one: settled as attached
        _await_hotplug(instance_id, volume_id, "attachment", timeout)
    vol = volumes.volumes().find(volume_id, "InvalidVolume.NotFound")
    if not vol["Attachments"] or vol["Attachments"][0]["InstanceId"] != instance_id:
        raise BadInput(f"IncorrectState: the attachment of {volume_id} to {instance_id} failed")
    return vol["Attachments"][0]


def detach_volume(
    volume_id: str,
    instance_id: str | None = None,
    force: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """DetachVolume. From a stopped instance at once; from a running one the guest is asked
    to let go of the device (`detaching` until it has, then `detached` and the volume
    available). A guest that does not let go within harness.instances.devices'
    DETACH_TIMEOUT leaves the volume `detaching` (exit 2 saying so); `force` ends the
    attachment anyway. The root volume is never detached."""
    from harness.instances.devices import DETACH_TIMEOUT, FORCE_GRACE

    vol = volumes.volumes().find(volume_id, "InvalidVolume.NotFound")
    if vol["State"] != "in-use":
        raise BadInput(f"IncorrectState: Volume '{volume_id}' is in the '{vol['State']}' state.")
    attachment = vol["Attachments"][0]
    iid = attachment["InstanceId"]
    if instance_id and instance_id != iid:
        raise BadInput(
            f"InvalidAttachment.NotFound: The volume '{volume_id}' is not attached to "
            f"instance '{instance_id}'"
        )
    reconcile(store.find(iid))
    with store.locked(iid):
        rec = store.find(iid)
        state = rec["State"]["Name"]
        if any(m["DeviceName"] == rec["RootDeviceName"] and m["Ebs"]["VolumeId"] == volume_id
               for m in rec["BlockDeviceMappings"]):  # fmt: skip
            raise BadInput(
                f"OperationNotPermitted: {volume_id} is the root volume of {iid}; "
                "it cannot be detached"
            )
        if state in ("stopped", "terminated"):
            volumes.detach(volume_id, instance_id)

            def change(r: Row) -> None:
                hotplug.detached(r, volume_id)
                if not hotplug.requests(r):
                    r["Amilab"].pop("Hotplug", None)

            store.instances().update(iid, change)
            return dict(attachment, State="detached")
        if state != "running":
            raise BadInput(
                f"IncorrectInstanceState: The instance '{iid}' is {state}; detach from a "
                "running or stopped instance"
            )
        m = hotplug.mapping(rec, volume_id)
        if m is not None and m["Ebs"].get("Status") == "attaching":
            raise BadInput(f"IncorrectState: Volume '{volume_id}' is still attaching")
        _refuse_hotplug(rec, f"detaching {volume_id}")
        volumes.attachment_state(volume_id, "detaching")
        rec = store.instances().update(iid, lambda r: hotplug.want_detach(r, volume_id, force))
        _signal_supervisor(rec, signal.SIGUSR2)  # a dead one: settled as detached
        wait = timeout if timeout is not None else (FORCE_GRACE if force else DETACH_TIMEOUT)
        _await_hotplug(iid, volume_id, "detachment", wait + 30)
    return dict(attachment, State="detached")


# ---------------------------------------------------------------- create-image


def create_image(
    instance_id: str, name: str, no_reboot: bool = False, description: str = ""
) -> ImageRecord:
    """CreateImage: unless `no_reboot`, a running instance is stopped first so its disks are
    consistent, and started again afterwards, as EC2 does. Every EBS volume is snapshotted;
    the new AMI (pending while that happens, then available) refers to those snapshots,
    with the instance's kernel and ramdisk for a paravirtual image."""
    from builder.images.lifecycle import check_name_free

    registry = Registry()
    check_name_free(registry, name)
    rec = reconcile(store.find(instance_id))
    state = rec["State"]["Name"]
    if state not in ("running", "stopped"):
        raise BadInput(f"IncorrectInstanceState: The instance '{instance_id}' is {state}")
    source = registry.find(rec["ImageId"], "machine")
    restart = state == "running" and not no_reboot
    if restart:
        stop_instances([instance_id], wait=True, timeout=180)
    try:
        snaps: list[tuple[dict[str, Any], Row]] = []
        for m in rec["BlockDeviceMappings"]:
            snap = volumes.create_snapshot(
                m["Ebs"]["VolumeId"], f"Created by CreateImage({instance_id}) for {name}"
            )
            snaps.append((m, snap))
    finally:
        if restart:
            start_instances([instance_id])
    root_m, root_snap = next((m, s) for m, s in snaps if m["DeviceName"] == rec["RootDeviceName"])
    digest = root_snap["Amilab"]["Digest"]
    reg = factory.Registration(
        name, source.virtualization_type, source.root_device_name, source.architecture,
        rec.get("KernelId") if source.virtualization_type == "paravirtual" else None,
        rec.get("RamdiskId") if source.virtualization_type == "paravirtual" else None,
    )  # fmt: skip
    launch = source.launch
    image = factory.machine_image(
        reg, digest, launch, {"raw": root_snap["Amilab"]["Path"]},
        description=description or f"created from {instance_id}",
        extra={"created_from": instance_id, "source_image_id": source.image_id},
        id_extra={"instance": instance_id}, fresh=True,
    )  # fmt: skip
    image.block_device_mappings = [
        {"DeviceName": m["DeviceName"], "Ebs": {
            "SnapshotId": s["SnapshotId"], "VolumeSize": s["VolumeSize"],
            "VolumeType": "standard", "DeleteOnTermination": m["Ebs"]["DeleteOnTermination"],
            "Encrypted": False}}
        for m, s in snaps
    ]  # fmt: skip
    image.state = "pending"
    registry.register_new(image)

    def available(r: ImageRecord) -> None:
        r.state = "available"

    return registry.update(image.image_id, available)


# ------------------------------------------------------------------ bundle-vol


def bundle_vol(
    instance_id: str,
    cert: Path,
    private_key: Path,
    dest: Path,
    *,
    prefix: str = "image",
    excludes: list[str] | None = None,
    no_filter: bool = False,
    no_reboot: bool = False,
    kernel: str | None = None,
    ramdisk: str | None = None,
    user: str | None = None,
    ec2_cert: Path | None = None,
) -> tuple[Any, list[str]]:
    """ec2-bundle-vol for an instance, from the host: its root volume's filesystem, less
    what is excluded, as an instance-store bundle whose manifest names the instance's kernel
    and ramdisk (as ec2-bundle-vol read them from the metadata). Like create-image, a running
    instance is stopped first and started again afterwards unless `no_reboot`; the volume is
    only ever read."""
    from builder.images import bundle as bundle_mod
    from builder.images.bundle_volume import Selection, bundle_volume
    from builder.images.shapes import account_id

    sel = Selection(list(excludes or []), no_filter)  # bad paths refused before any stop
    rec = reconcile(store.find(instance_id))
    state = rec["State"]["Name"]
    if state not in ("running", "stopped"):
        raise BadInput(f"IncorrectInstanceState: The instance '{instance_id}' is {state}")
    image = Registry().find(rec["ImageId"], "machine")
    root = next((m for m in rec["BlockDeviceMappings"]
                 if m["DeviceName"] == rec["RootDeviceName"]), None)  # fmt: skip
    if root is None:
        raise BadInput(f"{instance_id} has no root volume")
    vol = volumes.volumes().find(root["Ebs"]["VolumeId"], "InvalidVolume.NotFound")
    registry = Registry()
    for ref in (kernel, ramdisk):
        if ref and ref != "none":
            registry.find(ref)
    account = user or account_id()
    restart = state == "running" and not no_reboot
    if restart:
        stop_instances([instance_id], wait=True, timeout=180)
    try:
        result, removed = bundle_volume(
            volumes.volume_path(vol), "qcow2", image.launch.fs_offset or 0, dest, prefix, sel,
            user=account, architecture=rec["Architecture"], user_cert=cert,
            private_key=private_key, ec2_cert=ec2_cert or bundle_mod.ec2_key_pair()[0],
            kernel_id=None if kernel == "none" else kernel or rec.get("KernelId"),
            ramdisk_id=None if ramdisk == "none" else ramdisk or rec.get("RamdiskId"),
            root_device=rec["RootDeviceName"],
        )  # fmt: skip
    finally:
        if restart:
            start_instances([instance_id])
    bundle_mod.remember_signing_cert(account, cert)  # as `bundle` does, for `register`
    return result, removed


def home_paths() -> dict[str, Path]:
    return {"instances": store.instances_dir(), "volumes": volumes.volumes_dir(),
            "artifacts": paths.artifacts_dir()}  # fmt: skip
