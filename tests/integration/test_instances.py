"""Instances that live (issue 15), through the CLI, on real guests.

One module, three instances, each exercised for many things:
1. the 2008 session (seeds/002): the default PV image launched with `--kernel` of another
   registered kernel (bullseye's cloud kernel, `register-kernel --deb`); describe-instances
   says running with that KernelId; SSH to the instance's own address on port 22 answers
   `uname -r` with that kernel's release and the metadata's kernel-id is that AKI; then
   `kill -9` of its supervisor: no QEMU of it within 5 s, and describe says stopped with why.
2. a launch with `--ramdisk none` (ramdisk-id is 404 inside), an extra EBS volume without
   DeleteOnTermination and an instance-store disk (ebs1, ephemeral0 in the metadata); a file
   and a package installed over SSH; stop/start keeps the file; reboot; console output;
   create-image (stopped, then --no-reboot); a scheduled system-reboot and a scheduled
   instance-stop (moved by modify-instance-event-start-time), curled from inside and carried
   out at their time; bundle-vol of the stopped instance (default filter and --exclude),
   upload-bundle to a directory, register, smoke of the new instance-store AMI; terminate
   removes the root volume and leaves the other one. Meanwhile a volume made from the image's
   snapshot is attached while it runs (hot-plug: the guest reads the snapshot's bytes; the
   metadata's block-device-mapping/ shows it only from the next start, as EC2's does), kept
   across the stop/start and the reboot, and detached while it runs (the guest lets go).
3. the new AMI relaunched with a volume made from a snapshot of that other volume: the file,
   the package and the volume's data are there; a spot interruption announced 30 s ahead is
   served at spot/instance-action and carried out at the announced time.
Then EC2's refusals, each exit 2 with EC2's error code.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from builder.build import kernel
from builder.ids import sparse_sha256
from harness.launch.ssh import wait_for_ssh
from tests.conftest import ROOT, need, run_amilab
from tests.integration.builds import build
from tests.integration.instances_helpers import (
    BOOT,
    cli,
    cli_json,
    curl,
    describe,
    processes_in,
    record,
    sh,
    wait_state,
)

pytestmark = pytest.mark.integration
# a guest going down for a reboot drops connections after their banner; paramiko's transport
# thread logs each with a traceback, which says nothing the test does not handle
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

OTHER_KERNEL = "debian-cloud-bullseye"  # one .deb; boots the bookworm image under TCG
SHARED: dict[str, Any] = {}


def login(env: dict, iid: str) -> paramiko.SSHClient:
    """SSH to the instance's own address, port 22 (unless the host's sshd holds port 22 of
    every address: then the port the instance was given, printed)."""
    key = paramiko.Ed25519Key.from_private_key_file(str(env["pem"]))
    address = describe(env, iid)["PublicIpAddress"]
    port = supervisor_of(env, iid)["SshPort"]
    if port != 22:
        print(f"note: port 22 is taken on this host; {iid} has SSH on {address}:{port}")
    return wait_for_ssh(port, key, BOOT, lambda: None, host=address).client


def supervisor_of(env: dict, iid: str) -> dict:
    return record(env, iid)["Amilab"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    need("dpkg-deb", "dpkg")
    need("ssh", "openssh-client")
    home = tmp_path_factory.mktemp("home")
    # the default images shut down on the power button; 30 s is room for that under TCG
    e: dict[str, Any] = {"home": home, "env": {"AMILAB_HOME": str(home),
                                                "AMILAB_STOP_TIMEOUT": "30"}}  # fmt: skip
    built = build(ROOT / "build.yaml", home, "--image", "debian-pv")["Images"]
    e["ami"] = next(i for i in built if i["ImageType"] == "machine")
    k = kernel.resolve_kernel(kernel.definition(OTHER_KERNEL))
    assert k.deb is not None
    (aki,) = cli_json(e, "register-kernel", "--deb", str(k.deb))["Images"]
    e["aki"], e["release"] = aki["ImageId"], k.release
    pem = home / "k1.pem"
    pem.write_text(cli(e, "create-key-pair", "--key-name", "k1").stdout)
    pem.chmod(0o600)
    e["pem"] = pem
    pkg = tmp_path_factory.mktemp("pkg")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: amilab-hello\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: amilab <amilab@localhost>\nDescription: a package installed over SSH\n"
    )
    (pkg / "usr/share/amilab-hello").mkdir(parents=True)
    (pkg / "usr/share/amilab-hello/hello").write_text("hello from a package\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(home / "hello.deb")],
                   check=True, capture_output=True)  # fmt: skip
    e["deb"] = home / "hello.deb"
    yield e
    for res in cli_json(e, "describe-instances")["Reservations"]:
        for inst in res["Instances"]:
            if inst["State"]["Name"] != "terminated":
                cli(e, "terminate-instances", inst["InstanceId"], "--wait", ok=False)


def test_2008_session_then_kill_9_of_its_supervisor(env: dict) -> None:
    t0 = time.monotonic()
    res = cli_json(env, "run-instances", env["ami"]["ImageId"], "--kernel", env["aki"],
                   "--key-name", "k1")  # fmt: skip
    (inst,) = res["Instances"]
    iid, address = inst["InstanceId"], inst["PublicIpAddress"]
    assert inst["State"]["Name"] == "pending" and address.startswith("127.")
    got = wait_state(env, iid, "running")
    assert got["KernelId"] == env["aki"] and got["ImageId"] == env["ami"]["ImageId"]
    assert got["KeyName"] == "k1" and got["InstanceType"] == "m1.small"
    client = login(env, iid)  # port 22 of the instance's own address
    print(f"2008 session: SSH {time.monotonic() - t0:.1f} s after run-instances")
    assert sh(client, "uname -r") == env["release"]
    assert curl(client, "/2008-02-01/meta-data/kernel-id") == ("200", env["aki"])
    client.close()
    via_cli = cli(env, "ssh", "-i", str(env["pem"]), iid, "--", "uname", "-r")
    assert via_cli.stdout.strip() == env["release"]

    a = supervisor_of(env, iid)
    qemus = processes_in(a["Dir"])
    assert len(qemus) == 2, qemus  # the guest's QEMU and its network's
    os.kill(a["Supervisor"]["Pid"], signal.SIGKILL)
    killed = time.monotonic()
    while processes_in(a["Dir"]) and time.monotonic() - killed < 5:
        time.sleep(0.1)
    assert not processes_in(a["Dir"]), "a QEMU outlived its supervisor by 5 s"
    print(f"kill -9: no QEMU left after {time.monotonic() - killed:.2f} s")
    got = describe(env, iid)
    assert got["State"]["Name"] == "stopped"
    assert got["StateReason"]["Code"] == "Server.InternalError"
    assert "supervisor" in got["StateReason"]["Message"]
    cli(env, "terminate-instances", iid, "--wait")
    assert describe(env, iid)["State"]["Name"] == "terminated"


def _disk_by_serial(client: paramiko.SSHClient, volume_id: str) -> str:
    serial = volume_id.replace("-", "")
    out = sh(client, "for d in /sys/block/nvme*n1; do echo ${d##*/} $(cat $d/device/serial); done")
    disks = dict(reversed(line.split(maxsplit=1)) for line in out.splitlines())
    return "/dev/" + disks[serial]


def test_change_stop_start_reboot_image_terminate(env: dict) -> None:
    ami = env["ami"]
    original = sparse_sha256(Path(ami["Locations"]["raw"]))
    res = cli_json(env, "run-instances", ami["ImageId"], "--ramdisk", "none", "--disk-bus", "nvme",
                   "--key-name", "k1", "--tag", "Name=web",
                   "--block-device-mapping", "/dev/sdf=:1:false",
                   "--block-device-mapping", "/dev/sdb=ephemeral0")  # fmt: skip
    iid = res["Instances"][0]["InstanceId"]
    got = wait_state(env, iid, "running")
    by_tag = cli_json(env, "describe-instances", "--filters", "Name=tag:Name,Values=web")
    assert [i["InstanceId"] for r in by_tag["Reservations"] for i in r["Instances"]] == [iid]
    assert got["RamdiskId"] is None
    vols = {m["DeviceName"]: m["Ebs"] for m in got["BlockDeviceMappings"]}
    root_vol, data_vol = vols[ami["RootDeviceName"]]["VolumeId"], vols["/dev/sdf"]["VolumeId"]
    assert vols["/dev/sdf"]["DeleteOnTermination"] is False
    client = login(env, iid)
    assert curl(client, "/2008-02-01/meta-data/ramdisk-id")[0] == "404"
    listing = curl(client, "/latest/meta-data/block-device-mapping/")[1].split()
    assert {"ami", "root", "ebs1", "ephemeral0"} <= set(listing)
    assert curl(client, "/latest/meta-data/block-device-mapping/ebs1")[1] == "/dev/sdf"
    assert sh(client, "ls /sys/block | grep -c nvme") == "3"  # root, sdf, ephemeral0
    sh(client, "echo changed > /root/marker")
    sftp = client.open_sftp()
    sftp.put(str(env["deb"]), "/root/hello.deb")
    sftp.close()
    sh(client, "dpkg -i /root/hello.deb")
    data_dev = _disk_by_serial(client, data_vol)
    sh(client, f"printf amilab-volume-data | dd of={data_dev} conv=fsync status=none; sync")
    boot_id = sh(client, "cat /proc/sys/kernel/random/boot_id")
    t = time.monotonic()
    hot_vol = _attach_while_running(env, iid, client, ami)
    hot_seconds = time.monotonic() - t
    client.close()

    t = time.monotonic()
    cli(env, "stop-instances", iid, "--wait")
    print(f"stop: {time.monotonic() - t:.1f} s")
    assert describe(env, iid)["State"]["Name"] == "stopped"
    # a clean shutdown on the ACPI power button, not QEMU ended after the timeout
    assert "reboot: Power down" in cli(env, "get-console-output", iid).stdout[-3000:]
    cli(env, "start-instances", iid, "--wait")
    client = login(env, iid)  # its address may be new, as on EC2
    assert sh(client, "cat /root/marker") == "changed"
    assert "Linux version" in cli(env, "get-console-output", iid).stdout
    t = time.monotonic()
    _disk_by_serial(client, hot_vol)  # attached while it ran: still there after a stop/start
    assert curl(client, "/latest/meta-data/block-device-mapping/ebs2") == ("200", "/dev/sdh")
    hot_seconds += time.monotonic() - t
    boot_id = sh(client, "cat /proc/sys/kernel/random/boot_id")  # this start's, not launch's
    client.close()
    cli(env, "reboot-instances", iid)
    deadline = time.monotonic() + BOOT
    while True:
        assert time.monotonic() < deadline, "no new boot after reboot-instances"
        try:
            client = login(env, iid)
            new_id = sh(client, "cat /proc/sys/kernel/random/boot_id")
            client.close()
            if new_id != boot_id:
                break
        except Exception:  # noqa: BLE001 - going down or coming up
            pass
        time.sleep(1)
    t = time.monotonic()
    _detach_while_running(env, iid, hot_vol)  # after the reboot: cold-plugged at its start
    hot_seconds += time.monotonic() - t
    print(f"hot-plug part: {hot_seconds:.1f} s")

    new_ami = cli(env, "create-image", iid, "--name", "changed").stdout.strip()
    assert describe(env, iid)["State"]["Name"] in ("pending", "running")  # started again
    image = cli_json(env, "images", "--image-id", new_ami)["Images"][0]
    assert image["State"] == "available" and image["KernelId"] == ami["KernelId"]
    snaps = {m["DeviceName"]: m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]}
    original_snap = ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert snaps[ami["RootDeviceName"]] != original_snap
    described = cli_json(env, "describe-snapshots", snaps[ami["RootDeviceName"]])["Snapshots"]
    assert described[0]["State"] == "completed" and described[0]["VolumeId"] == root_vol
    wait_state(env, iid, "running")
    quick = cli(env, "create-image", iid, "--name", "changed-no-reboot", "--no-reboot")
    assert describe(env, iid)["State"]["Name"] == "running"
    assert cli_json(env, "images", "--image-id", quick.stdout.strip())["Images"][0]["State"] == (
        "available"
    )
    t = time.monotonic()
    _scheduled_events(env, iid)  # it ends stopped by a scheduled instance-stop
    print(f"scheduled events part: {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    _bundle_vol(env, iid, root_vol)
    print(f"bundle-vol part: {time.monotonic() - t:.1f} s")
    data_snap = cli_json(env, "create-snapshot", "--volume-id", data_vol)["SnapshotId"]

    cli(env, "terminate-instances", iid, "--wait")
    left = {v["VolumeId"]: v for v in cli_json(env, "describe-volumes")["Volumes"]}
    assert root_vol not in left  # DeleteOnTermination
    assert left[data_vol]["State"] == "available" and not left[data_vol]["Attachments"]
    # the original image and its snapshot never changed
    assert sparse_sha256(Path(ami["Locations"]["raw"])) == original
    now = cli_json(env, "images", "--image-id", ami["ImageId"])["Images"][0]
    assert now["BlockDeviceMappings"] == ami["BlockDeviceMappings"]
    assert now["Locations"] == ami["Locations"]
    SHARED.update(new_ami=new_ami, data_snap=data_snap, root_snap=snaps[ami["RootDeviceName"]])


def _attach_while_running(env: dict, iid: str, client: paramiko.SSHClient, ami: dict) -> str:
    """A volume made from the image's root snapshot, attached while the instance runs: the
    guest gets a disk with the volume ID as its serial and reads the snapshot's bytes; the
    metadata's block-device-mapping/ is as at the start (EC2: "Amazon EBS volumes are only
    available in metadata if they were present at launch time or when the instance was last
    started")."""
    import hashlib

    snap = ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    vol = cli_json(env, "create-volume", "--snapshot-id", snap)["VolumeId"]
    att = cli_json(env, "attach-volume", "--volume-id", vol, "--instance-id", iid,
                   "--device", "/dev/sdh")  # fmt: skip
    assert (att["State"], att["Device"]) == ("attached", "/dev/sdh")
    mapped = {m["DeviceName"]: m["Ebs"] for m in describe(env, iid)["BlockDeviceMappings"]}
    assert mapped["/dev/sdh"]["VolumeId"] == vol and mapped["/dev/sdh"]["Status"] == "attached"
    dev = _disk_by_serial(client, vol)  # NVMe here (--disk-bus nvme), as at a start
    with open(ami["Locations"]["raw"], "rb") as f:
        want = hashlib.sha256(f.read(1 << 20)).hexdigest()
    assert sh(client, f"head -c 1048576 {dev} | sha256sum").split()[0] == want
    listing = curl(client, "/latest/meta-data/block-device-mapping/")[1].split()
    assert "ebs2" not in listing and "ebs1" in listing
    return vol


def _detach_while_running(env: dict, iid: str, vol: str) -> None:
    """The guest lets go of the disk (QMP device_del, its ACPI eject): detached, available,
    gone from the guest and the mapping; then the volume is deleted."""
    client = login(env, iid)
    _disk_by_serial(client, vol)
    att = cli_json(env, "detach-volume", "--volume-id", vol)
    assert att["State"] == "detached"
    serials = sh(client, "cat /sys/block/nvme*n1/device/serial")
    assert vol.replace("-", "") not in serials, serials
    client.close()
    (got,) = cli_json(env, "describe-volumes", vol)["Volumes"]
    assert got["State"] == "available" and got["Attachments"] == []
    assert "/dev/sdh" not in [m["DeviceName"] for m in describe(env, iid)["BlockDeviceMappings"]]
    cli(env, "delete-volume", "--volume-id", vol)


SECRET = "amilab-bundle-vol-secret"


def _epoch(iso: str) -> float:
    return float(calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")))


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _scheduled_events(env: dict, iid: str) -> None:
    """A system-reboot then an instance-stop (moved with modify-instance-event-start-time):
    served at events/maintenance/scheduled in EC2's shape, shown by describe-instance-status,
    carried out at their time, then served under history."""
    client = login(env, iid)
    boot_id = sh(client, "cat /proc/sys/kernel/random/boot_id")
    qemu = supervisor_of(env, iid)["QemuPid"]
    ev = cli_json(env, "schedule-instance-event", iid, "--code", "system-reboot",
                  "--not-before", "+40")["Event"]  # fmt: skip
    at = _epoch(ev["NotBefore"])
    code, body = curl(client, "/latest/meta-data/events/maintenance/scheduled")
    assert code == "200", body
    (served,) = json.loads(body)
    assert list(served) == ["NotBefore", "Code", "Description", "EventId", "NotAfter", "State"]
    assert served["EventId"] == ev["InstanceEventId"] and served["State"] == "active"
    assert served["Code"] == "system-reboot"
    assert served["NotBefore"] == time.strftime("%-d %b %Y %H:%M:%S GMT", time.gmtime(at))
    assert '"NotBefore" : "' in body  # EC2 prints " : "
    assert curl(client, "/latest/meta-data/events/maintenance/history") == ("200", "[]")
    (status,) = cli_json(env, "describe-instance-status", iid)["InstanceStatuses"]
    assert [e["InstanceEventId"] for e in status["Events"]] == [ev["InstanceEventId"]]
    client.close()
    while not _gone(qemu):
        assert time.time() < at + 30, "the scheduled reboot did not happen"
        time.sleep(0.1)
    print(f"scheduled reboot: QEMU ended {time.time() - at:+.1f} s from NotBefore")
    assert abs(time.time() - at) <= 5
    client = login(env, iid)
    assert sh(client, "cat /proc/sys/kernel/random/boot_id") != boot_id
    assert curl(client, "/latest/meta-data/events/maintenance/scheduled") == ("200", "[]")
    (done,) = json.loads(curl(client, "/latest/meta-data/events/maintenance/history")[1])
    assert done["EventId"] == ev["InstanceEventId"] and done["State"] == "completed"
    assert done["Description"].startswith("[Completed] ")

    # what bundle-vol must carry, and what it must leave out (written before the stop)
    sh(client, "echo bundled > /root/bundled && mkdir -p /media/keys /srv/skip && "
               f"echo {SECRET} > /media/keys/pk-user.pem && echo {SECRET} > /root/.ssh/id_rsa && "
               "echo skipped > /srv/skip/file && sync")  # fmt: skip
    stop = cli_json(env, "schedule-instance-event", iid, "--code", "instance-stop",
                    "--not-before", "+3600")["Event"]  # fmt: skip
    moved = cli_json(env, "modify-instance-event-start-time", "--instance-id", iid,
                     "--instance-event-id", stop["InstanceEventId"],
                     "--not-before", "+25")["Event"]  # fmt: skip
    at = _epoch(moved["NotBefore"])
    assert at < _epoch(stop["NotBefore"]) - 3000
    served = json.loads(curl(client, "/latest/meta-data/events/maintenance/scheduled")[1])
    assert [(e["EventId"], e["Code"]) for e in served] == [
        (stop["InstanceEventId"], "instance-stop")
    ]
    assert served[0]["NotBefore"] == time.strftime("%-d %b %Y %H:%M:%S GMT", time.gmtime(at))
    client.close()
    while describe(env, iid)["State"]["Name"] == "running":
        assert time.time() < at + 30, "the scheduled stop did not happen"
        time.sleep(0.2)
    print(f"scheduled stop: stopping {time.time() - at:+.1f} s from NotBefore")
    assert abs(time.time() - at) <= 5
    got = wait_state(env, iid, "stopped", 120)
    assert got["StateReason"]["Code"] == "Server.ScheduledStop"
    (status,) = cli_json(env, "describe-instance-status", iid,
                         "--include-all-instances")["InstanceStatuses"]  # fmt: skip
    assert [e["Description"][:12] for e in status["Events"]] == ["[Completed] "] * 2


def _bundle_vol(env: dict, iid: str, root_vol: str) -> None:
    """bundle-vol of the stopped instance, upload-bundle to a directory, register: the new
    instance-store AMI has the instance's change and not the excluded paths (nor their
    bytes), boots and passes smoke; the instance's volume was only read."""
    from builder.images.bundle_keys import make_key_pair

    home = env["home"]
    cert, pk = home / "cert.pem", home / "pk.pem"
    make_key_pair(cert, pk, "bundler")
    volume = home / "volumes" / f"{root_vol}.qcow2"
    before = sparse_sha256(volume)
    ari = env["ami"]["RamdiskId"]  # the instance ran without one; the bundle gets it back
    t = time.monotonic()
    res = cli_json(env, "bundle-vol", iid, "-c", str(cert), "-k", str(pk),
                   "-d", str(home / "bundle"), "-p", "from-instance",
                   "--exclude", "/srv/skip", "--ramdisk", ari)  # fmt: skip
    print(f"bundle-vol: {time.monotonic() - t:.1f} s, {len(res['Parts'])} parts")
    assert {"/srv/skip", "/media/keys", "/root/.ssh/authorized_keys",
            "/root/.ssh/id_rsa"} <= set(res["Excluded"])  # fmt: skip
    assert sparse_sha256(volume) == before
    assert describe(env, iid)["State"]["Name"] == "stopped"
    up = cli_json(env, "upload-bundle", "-m", res["ManifestPath"], "-b", str(home / "bucket"))
    assert up["Objects"][-1] == "from-instance.manifest.xml"
    new = cli(env, "register", up["ImageLocation"], "--name", "bundled").stdout.strip()
    image = cli_json(env, "images", "--image-id", new)["Images"][0]
    assert image["RootDeviceType"] == "instance-store"
    assert image["ImageLocation"] == up["ImageLocation"]
    assert image["KernelId"] == env["ami"]["KernelId"] and image["RamdiskId"] == ari
    disk = image["Locations"]["raw"]

    def ls(path: str) -> str:
        return subprocess.run(["debugfs", "-R", f"ls -p {path}", disk], capture_output=True,
                              text=True).stdout  # fmt: skip

    assert "/bundled/" in ls("/root") and "/marker/" in ls("/root")
    assert "/id_rsa/" not in ls("/root/.ssh") and "/authorized_keys/" not in ls("/root/.ssh")
    assert "/keys/" not in ls("/media") and "/skip/" not in ls("/srv")
    found = subprocess.run(["grep", "-c", "-a", SECRET, disk], capture_output=True, text=True)
    assert found.stdout.strip() == "0", "an excluded file's bytes are in the bundled disk"
    smoked = run_amilab("smoke", new, "--json", env=env["env"], timeout=900)
    report = json.loads(smoked.stdout)
    report = report[0] if isinstance(report, list) else report
    assert smoked.returncode == 0 and report["Passed"] is True, smoked.stderr[-2000:]
    print(f"bundled AMI {new}: smoke passed, SSH after {report.get('SecondsToSsh')} s")


def test_relaunch_sees_the_changes_and_a_spot_interruption(env: dict) -> None:
    assert SHARED, "needs test_change_stop_start_reboot_image_terminate"
    res = cli_json(env, "run-instances", SHARED["new_ami"], "--ramdisk", "none",
                   "--disk-bus", "nvme", "--key-name", "k1",
                   "--block-device-mapping", f"/dev/sdg={SHARED['data_snap']}:",
                   "--spot-interruption-after", "130", "--spot-notice", "30")  # fmt: skip
    iid = res["Instances"][0]["InstanceId"]
    got = wait_state(env, iid, "running")
    client = login(env, iid)
    assert sh(client, "cat /root/marker") == "changed"
    assert "install ok installed" in sh(client, "dpkg -s amilab-hello")
    vols = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in got["BlockDeviceMappings"]}
    dev = _disk_by_serial(client, vols["/dev/sdg"])
    assert sh(client, f"head -c 18 {dev}") == "amilab-volume-data"
    code, _ = curl(client, "/latest/meta-data/spot/instance-action")
    assert code == "404", "announced before the notice"
    deadline = time.monotonic() + 120
    while (answer := curl(client, "/latest/meta-data/spot/instance-action"))[0] != "200":
        assert time.monotonic() < deadline, "never announced"
        time.sleep(1)
    action = json.loads(answer[1])
    at = calendar.timegm(time.strptime(action["time"], "%Y-%m-%dT%H:%M:%SZ"))
    assert action["action"] == "terminate"
    print(f"spot: announced {at - time.time():.1f} s ahead")
    assert 20 <= at - time.time() <= 31
    client.close()
    while describe(env, iid)["State"]["Name"] == "running":
        assert time.time() < at + 30, "not interrupted"
        time.sleep(0.5)
    print(f"spot: interrupted {time.time() - at:+.1f} s from the announced time")
    assert abs(time.time() - at) <= 5
    got = wait_state(env, iid, "terminated", 60)
    assert got["StateReason"]["Code"] == "Server.SpotInstanceTermination"


def test_ec2_refusals_exit_2_with_ec2_codes(env: dict) -> None:
    ami = env["ami"]["ImageId"]
    before = cli_json(env, "describe-volumes")["Volumes"]
    cases = [
        (("run-instances", ami, "--instance-type", "t3.micro"), "InvalidParameterCombination"),
        (("run-instances", ami, "--instance-type", "t4g.micro"), "InvalidParameterValue"),
        (("run-instances", ami, "--block-device-mapping", "/dev/sdb=ephemeral0",
          "--block-device-mapping", "/dev/sdc=ephemeral1"), "InvalidBlockDeviceMapping"),
        (("delete-snapshot", "--snapshot-id", SHARED.get("root_snap", "snap-x")),
         "InvalidSnapshot.InUse"),
        (("terminate-instances", "i-0000000000000000f"), "InvalidInstanceID.NotFound"),
        (("run-instances", ami, "--key-name", "nope"), "InvalidKeyPair.NotFound"),
    ]  # fmt: skip
    for args, code in cases:
        res = cli(env, *args, ok=False)
        assert res.returncode == 2, f"{args}: {res.returncode} {res.stderr}"
        assert code in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert cli_json(env, "describe-volumes")["Volumes"] == before  # nothing half-made
