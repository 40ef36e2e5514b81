"""`amilab api serve` driven by the aws CLI and boto3 (issue 16), on real guests.

One server and one build for the module; two guests booted at once (one launched by the
aws CLI, one by boto3, both with another registered kernel), one of them stopped and
started again; a third launch (account B's, of an AMI shared with it) is terminated while
pending, so it never costs a boot.
1. aws CLI: describe-images with owners and filters, create-key-pair, run-instances
   --kernel-id, wait instance-running, describe-instances, SSH with the key pair,
   get-console-output, create-image, wait image-available, create-snapshot, wait
   snapshot-completed, wait instance-status-ok (initializing until the guest answers),
   ModifyInstanceAttribute's instance type refused while running, stop/start with the
   waiters, terminate refused under termination protection, terminate, wait
   instance-terminated,
   create-store-image-task, describe-store-image-tasks, create-restore-image-task.
2. boto3, the 2008 session (seeds/002): describe_images of the machine, kernel and ramdisk
   images, run_instances with a kernel_id, describe_instances until running, `uname -r` over
   SSH is that kernel's release and meta-data/kernel-id is its AKI.
3. two accounts (seeds/004): B cannot see A's AMI (InvalidAMIID.NotFound), A shares it, B sees
   it with --executable-users self, launches it, copies it and owns the copy; a request with
   a wrong secret is AuthFailure and changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from builder.build import kernel
from harness.launch.ssh import wait_for_ssh
from tests.conftest import ROOT, need, run_amilab
from tests.integration import instances_helpers as live
from tests.integration.builds import build

pytestmark = pytest.mark.integration
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

OTHER_KERNEL = "debian-cloud-bullseye"
A = live.ACCOUNT
B = {
    "AccountId": "222222222222",
    "AccessKeyId": "AKIAAMILABTESTBBBBBB",
    "SecretAccessKey": "b-secret",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    need("dpkg-deb", "dpkg")
    home = tmp_path_factory.mktemp("home")
    env = {
        "AMILAB_HOME": str(home),
        "AMILAB_STOP_TIMEOUT": "5",
        "AMILAB_ACCOUNT_ID": A["AccountId"],
    }
    t0 = time.monotonic()
    built = build(ROOT / "build.yaml", home, "--image", "debian-pv", env=env)["Images"]
    ami = next(i for i in built if i["ImageType"] == "machine")
    k = kernel.resolve_kernel(kernel.definition(OTHER_KERNEL))
    assert k.deb is not None
    res = run_amilab("register-kernel", "--deb", str(k.deb), "--json", env=env, check=True)
    (aki,) = json.loads(res.stdout)["Images"]
    server, url = live.serve_api(home, env, [A, B], "--log")
    print(f"setup (build, kernel, server) {time.monotonic() - t0:.1f} s; {url}")
    state: dict[str, Any] = {
        "home": home,
        "env": env,
        "url": url,
        "ami": ami["ImageId"],
        "aki": aki["ImageId"],
        "release": k.release,
        "server": server,
    }
    yield state
    ec2 = client(state, A)
    for r in (
        ec2.describe_instances()["Reservations"]
        + client(state, B).describe_instances()["Reservations"]
    ):
        for i in r["Instances"]:
            if i["State"]["Name"] != "terminated":
                run_amilab("terminate-instances", i["InstanceId"], "--wait", env=env)
    server.terminate()
    _, err = server.communicate(timeout=30)
    calls = [ln.split()[2:] for ln in err.splitlines() if ln.startswith("amilab api: ")]
    calls = [c for c in calls if len(c) >= 2 and c[1].isdigit()]  # action, status[, code]
    print(f"requests served: {len(calls)}; actions: {sorted({c[0] for c in calls})}; "
          f"refusals: {sorted({' '.join(c) for c in calls if c[1] != '200'})}")  # fmt: skip
    assert "Traceback" not in err, err[-3000:]


def client(api: dict, who: dict, service: str = "ec2", secret: str | None = None) -> Any:
    return boto3.client(
        service, endpoint_url=api["url"], region_name="us-east-1",
        aws_access_key_id=who["AccessKeyId"],
        aws_secret_access_key=secret or who["SecretAccessKey"],
        config=Config(retries={"max_attempts": 2}),
    )  # fmt: skip


def aws(api: dict, *args: str, who: dict = A) -> Any:
    return live.aws_json(live.aws_ec2(api["url"], who, *args), args)


def ssh_port(api: dict, iid: str) -> int:
    return int(live.record(api, iid)["Amilab"].get("SshPort") or 22)


def login(api: dict, address: str, iid: str, pem: Path) -> paramiko.SSHClient:
    key = paramiko.RSAKey.from_private_key_file(str(pem))
    return wait_for_ssh(ssh_port(api, iid), key, live.BOOT, lambda: None, host=address).client


def test_aws_cli_and_boto3_drive_real_guests(api: dict) -> None:
    t0 = time.monotonic()
    found = aws(api, "describe-images", "--owners", "self", "--filters",
                "Name=name,Values=debian-p?", "Name=virtualization-type,Values=paravirtual",
                )  # fmt: skip
    assert [i["ImageId"] for i in found["Images"]] == [api["ami"]]
    image = found["Images"][0]
    assert image["OwnerId"] == A["AccountId"] and image["KernelId"].startswith("aki-")
    pem = api["home"] / "k1.pem"
    made = aws(api, "create-key-pair", "--key-name", "k1")
    pem.write_text(made["KeyMaterial"])
    pem.chmod(0o600)
    # the aws CLI's launch and boto3's (the 2008 session) boot at the same time
    res = aws(api, "run-instances", "--image-id", api["ami"], "--kernel-id", api["aki"],
              "--key-name", "k1", "--instance-type", "m1.small", "--count", "1",
              "--tag-specifications", "ResourceType=instance,Tags=[{Key=Name,Value=cli}]",
              )  # fmt: skip
    (inst,) = res["Instances"]
    x = inst["InstanceId"]
    assert inst["State"]["Name"] == "pending" and inst["KernelId"] == api["aki"]
    ec2 = client(api, A)
    machine = ec2.describe_images(ImageIds=[api["ami"]])["Images"][0]
    kernels = ec2.describe_images(Filters=[{"Name": "image-type", "Values": ["kernel"]}])["Images"]
    ramdisks = ec2.describe_images(Filters=[{"Name": "image-type", "Values": ["ramdisk"]}])[
        "Images"
    ]
    assert api["aki"] in {k["ImageId"] for k in kernels}
    assert machine["RamdiskId"] in {r["ImageId"] for r in ramdisks}
    key2 = ec2.create_key_pair(KeyName="k2")
    pem2 = api["home"] / "k2.pem"
    pem2.write_text(key2["KeyMaterial"])
    pem2.chmod(0o600)
    y = ec2.run_instances(
        ImageId=api["ami"],
        KernelId=api["aki"],
        MinCount=1,
        MaxCount=1,
        KeyName="k2",
        ClientToken="session-2008",
    )["Instances"][0]["InstanceId"]
    again = ec2.run_instances(ImageId=api["ami"], KernelId=api["aki"], MinCount=1, MaxCount=1,
                              KeyName="k2", ClientToken="session-2008")  # fmt: skip
    assert [i["InstanceId"] for i in again["Instances"]] == [y]  # ClientToken: no second launch

    # the status checks: initializing from the moment QEMU runs until the guest answers
    deadline = time.monotonic() + live.BOOT
    while True:
        (xs,) = ec2.describe_instance_status(InstanceIds=[x], IncludeAllInstances=True)[
            "InstanceStatuses"]  # fmt: skip
        if xs["InstanceState"]["Name"] != "pending":
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert xs["InstanceStatus"] == {"Status": "initializing", "Details": [
        {"Name": "reachability", "Status": "initializing"}]}, xs  # fmt: skip
    aws(api, "wait", "instance-running", "--instance-ids", x)
    got = aws(api, "describe-instances", "--instance-ids", x)["Reservations"][0]["Instances"][0]
    assert got["State"]["Name"] == "running" and got["KernelId"] == api["aki"]
    assert got["Tags"] == [{"Key": "Name", "Value": "cli"}]
    cx = login(api, got["PublicIpAddress"], x, pem)
    print(f"aws CLI instance: SSH {time.monotonic() - t0:.1f} s after run-instances")
    aws(api, "wait", "instance-status-ok", "--instance-ids", x)
    (xs,) = aws(api, "describe-instance-status", "--instance-ids", x)["InstanceStatuses"]
    assert xs["SystemStatus"]["Details"] == [{"Name": "reachability", "Status": "passed"}]
    print(f"aws CLI instance: status ok {time.monotonic() - t0:.1f} s after run-instances")
    assert live.sh(cx, "uname -r") == api["release"]
    live.sh(cx, "echo made-through-the-api > /root/api.txt && sync")
    cx.close()
    # boto3: describe_instances until running, then the 2008 session's checks
    deadline = time.monotonic() + live.BOOT
    while True:
        yi = ec2.describe_instances(InstanceIds=[y])["Reservations"][0]["Instances"][0]
        if yi["State"]["Name"] == "running":
            break
        assert time.monotonic() < deadline and yi["State"]["Name"] == "pending", yi["State"]
        time.sleep(1)
    cy = login(api, yi["PublicIpAddress"], y, pem2)
    assert live.sh(cy, "uname -r") == api["release"]
    assert live.curl(cy, "/2008-02-01/meta-data/kernel-id") == ("200", api["aki"])
    assert live.curl(cy, "/2008-02-01/meta-data/ami-id") == ("200", api["ami"])
    # the image's generated ramdisk is made again for the other kernel (its own ARI): served;
    # a launch without one would answer 404, as seeds/002 shows
    ramdisk = live.curl(cy, "/2008-02-01/meta-data/ramdisk-id")
    assert ramdisk == (("200", yi["RamdiskId"]) if yi.get("RamdiskId") else ("404", ramdisk[1]))
    cy.close()
    ec2.terminate_instances(InstanceIds=[y])

    console = aws(api, "get-console-output", "--instance-id", x)
    assert "Linux version" in console["Output"]
    new = aws(api, "create-image", "--instance-id", x, "--name", "made-by-the-api", "--no-reboot")
    aws(api, "wait", "image-available", "--image-ids", new["ImageId"])
    root = got["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    snap = aws(api, "create-snapshot", "--volume-id", root, "--description", "root of x")
    aws(api, "wait", "snapshot-completed", "--snapshot-ids", snap["SnapshotId"])
    with pytest.raises(ClientError) as e:  # the type changes only while stopped
        ec2.modify_instance_attribute(InstanceId=x, InstanceType={"Value": "t1.micro"})
    assert e.value.response["Error"]["Code"] == "IncorrectInstanceState"
    stopping = aws(api, "stop-instances", "--instance-ids", x)["StoppingInstances"][0]
    assert stopping["PreviousState"]["Name"] == "running"
    aws(api, "wait", "instance-stopped", "--instance-ids", x)
    aws(api, "start-instances", "--instance-ids", x)
    aws(api, "wait", "instance-running", "--instance-ids", x)
    got = aws(api, "describe-instances", "--instance-ids", x)["Reservations"][0]["Instances"][0]
    cx = login(api, got["PublicIpAddress"], x, pem)
    assert live.sh(cx, "cat /root/api.txt") == "made-through-the-api"  # kept across stop/start
    cx.close()
    aws(api, "modify-instance-attribute", "--instance-id", x, "--disable-api-termination")
    with pytest.raises(ClientError) as e:
        ec2.terminate_instances(InstanceIds=[x])
    assert e.value.response["Error"]["Code"] == "OperationNotPermitted"
    aws(api, "modify-instance-attribute", "--instance-id", x, "--no-disable-api-termination")
    aws(api, "terminate-instances", "--instance-ids", x)
    aws(api, "wait", "instance-terminated", "--instance-ids", x, y)

    # seeds/003: the AMI made above, stored as one object and restored under a new ID
    key = aws(api, "create-store-image-task", "--image-id", new["ImageId"], "--bucket", "amis")
    assert key["ObjectKey"] == f"{new['ImageId']}.bin"
    deadline = time.monotonic() + 300
    while True:
        (task,) = aws(api, "describe-store-image-tasks", "--image-ids",
                      new["ImageId"])["StoreImageTaskResults"]  # fmt: skip
        if task["StoreTaskState"] != "InProgress":
            break
        assert time.monotonic() < deadline
        time.sleep(1)
    assert task["StoreTaskState"] == "Completed" and task["ProgressPercentage"] == 100, task
    restored = aws(api, "create-restore-image-task", "--bucket", "amis", "--object-key",
                   key["ObjectKey"], "--name", "restored-by-the-api")  # fmt: skip
    (r,) = aws(api, "describe-images", "--image-ids", restored["ImageId"])["Images"]
    assert r["ImageId"] != new["ImageId"] and r["Name"] == "restored-by-the-api"
    assert r["State"] == "available"
    print(f"aws CLI + boto3 sessions: {time.monotonic() - t0:.1f} s")


def test_sharing_between_two_accounts(api: dict) -> None:
    a, b = client(api, A), client(api, B)
    with pytest.raises(ClientError) as e:
        b.describe_images(ImageIds=[api["ami"]])
    assert e.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as e:
        b.run_instances(ImageId=api["ami"], MinCount=1, MaxCount=1)
    assert e.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"
    # a wrong secret: AuthFailure, and the permission is not granted
    forged = client(api, A, secret="not-a-secret")
    with pytest.raises(ClientError) as e:
        forged.modify_image_attribute(ImageId=api["ami"], LaunchPermission={
            "Add": [{"UserId": B["AccountId"]}]})  # fmt: skip
    assert e.value.response["Error"]["Code"] == "AuthFailure"
    assert b.describe_images(ExecutableUsers=["self"])["Images"] == []
    a.modify_image_attribute(ImageId=api["ami"], LaunchPermission={
        "Add": [{"UserId": B["AccountId"]}]})  # fmt: skip
    perms = a.describe_image_attribute(ImageId=api["ami"], Attribute="launchPermission")
    assert perms["LaunchPermissions"] == [{"UserId": B["AccountId"]}]
    shared = b.describe_images(ExecutableUsers=["self"])["Images"]
    assert [i["ImageId"] for i in shared] == [api["ami"]]
    assert b.describe_images(Owners=["self"])["Images"] == []
    launched = b.run_instances(ImageId=api["ami"], MinCount=1, MaxCount=1)
    (bi,) = launched["Instances"]
    assert launched["OwnerId"] == B["AccountId"]
    b.terminate_instances(InstanceIds=[bi["InstanceId"]])  # launched is enough: no boot
    assert a.describe_instances(Filters=[{"Name": "instance-id", "Values": [bi["InstanceId"]]}])[
        "Reservations"] == []  # fmt: skip
    copy = b.copy_image(SourceImageId=api["ami"], SourceRegion="us-east-1", Name="b-copy")
    (c,) = b.describe_images(Owners=["self"])["Images"]
    assert c["ImageId"] == copy["ImageId"] and c["OwnerId"] == B["AccountId"]
    assert client(api, B, "sts").get_caller_identity()["Account"] == B["AccountId"]
    b.get_waiter("instance_terminated").wait(
        InstanceIds=[bi["InstanceId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )


TF_MIRRORS = (
    "/opt/tf-plugins",
    "/usr/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
)
TF_MAIN = """
terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = "5.100.0" }
  }
}
variable "endpoint" { type = string }
variable "ami" { type = string }
provider "aws" {
  region                  = "us-east-1"
  access_key              = "%(key)s"
  secret_key              = "%(secret)s"
  skip_metadata_api_check = true
  skip_region_validation  = true
  endpoints {
    ec2 = var.endpoint
    sts = var.endpoint
  }
}
variable "public_key" { type = string }
resource "aws_key_pair" "k" {
  key_name   = "from-terraform"
  public_key = var.public_key
  tags       = { team = "kernel" }
}
resource "aws_instance" "guest" {
  ami           = var.ami
  instance_type = "m1.small"
  tags          = { Name = "from-terraform" }
}
output "id" { value = aws_instance.guest.id }
"""


def test_terraform_apply_boots_and_destroy_terminates(api: dict, tmp_path: Path) -> None:
    """Terraform is not in the package registries: used where it is installed, with the
    AWS provider in a local filesystem mirror (AMILAB_TF_MIRROR, or a known place)."""
    import shutil

    terraform = shutil.which("terraform")
    mirrors = [os.environ.get("AMILAB_TF_MIRROR", ""), *TF_MIRRORS]
    mirror = next(
        (m for m in mirrors if m and Path(m, "registry.terraform.io/hashicorp/aws").is_dir()), None
    )
    if terraform is None or mirror is None:
        pytest.skip("terraform or its AWS provider mirror is not installed here")
    (tmp_path / "cli.tfrc").write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/aws"]\n  }\n'
        '  direct { exclude = ["registry.terraform.io/hashicorp/aws"] }\n}\n'
    )
    (tmp_path / "main.tf").write_text(
        TF_MAIN % {"key": A["AccessKeyId"], "secret": A["SecretAccessKey"]}
    )
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(tmp_path / "cli.tfrc"), "TF_IN_AUTOMATION": "1",
           "CHECKPOINT_DISABLE": "1"}  # fmt: skip
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    tf_vars = ["-var", f"endpoint={api['url']}", "-var", f"ami={api['ami']}",
               "-var", f"public_key={(tmp_path / 'id.pub').read_text().strip()}"]  # fmt: skip

    def tf(*args: str) -> str:
        flags = ["-no-color"] + (["-input=false"] if args[0] != "output" else [])
        res = subprocess.run([terraform, *args, *flags], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=live.BOOT)  # fmt: skip
        assert res.returncode == 0, (
            f"terraform {args[0]}: {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
        return res.stdout

    t0 = time.monotonic()
    tf("init")
    tf("apply", "-auto-approve", *tf_vars)
    iid = json.loads(tf("output", "-json"))["id"]["value"]
    print(f"terraform apply: {time.monotonic() - t0:.1f} s to running ({iid})")
    ec2 = client(api, A)
    got = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert got["State"]["Name"] == "running" and got["ImageId"] == api["ami"]
    assert {"Key": "Name", "Value": "from-terraform"} in got["Tags"]
    (kp,) = ec2.describe_key_pairs(KeyNames=["from-terraform"])["KeyPairs"]
    assert kp["Tags"] == [{"Key": "team", "Value": "kernel"}]
    # what was written reads back the same: a plan right after apply has nothing to do
    # (exit 2 would mean changes; tags dropped by the server showed up here as drift)
    tf("plan", "-detailed-exitcode", *tf_vars)
    tf("destroy", "-auto-approve", "-refresh=false", *tf_vars)  # it was read just now
    got = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert got["State"]["Name"] == "terminated"
    print(f"terraform apply + destroy: {time.monotonic() - t0:.1f} s")


def test_import_image_from_a_bucket_registers_the_disk(api: dict) -> None:
    """VM Import as its users drive it: the disk (here the module's image, written as the
    streamOptimized VMDK VMware exports) in a bucket, `aws ec2 import-image`, then
    describe-import-image-tasks until it completes; the AMI is the caller's, HVM, and its
    disk is the one given (bit-exact after the round trip)."""
    from builder.ids import sparse_sha256

    raw = json.loads(run_amilab("images", "--json", env=api["env"], check=True).stdout)
    (image,) = [i for i in raw["Images"] if i["ImageId"] == api["ami"]]
    bucket = api["home"] / "api" / "buckets" / "vm-import"
    (bucket / "exports").mkdir(parents=True, exist_ok=True)
    run_amilab("convert", image["ImageLocation"], str(bucket / "exports/guest.vmdk"), "--format",
               "vmdk", "--subformat", "streamOptimized", check=True)  # fmt: skip
    t0 = time.monotonic()
    disk = "Format=vmdk,UserBucket={S3Bucket=vm-import,S3Key=exports/guest.vmdk}"
    started = aws(api, "import-image", "--description", "from VMware", "--disk-containers", disk)
    task_id = started["ImportTaskId"]
    assert started["Status"] == "active", started
    ec2 = client(api, A)
    while True:
        (task,) = ec2.describe_import_image_tasks(ImportTaskIds=[task_id])["ImportImageTasks"]
        if task["Status"] != "active" or time.monotonic() - t0 > live.BOOT:
            break
        time.sleep(1)
    print(f"import-image: {time.monotonic() - t0:.1f} s to {task['Status']}")
    assert task["Status"] == "completed", task
    (ami,) = ec2.describe_images(ImageIds=[task["ImageId"]])["Images"]
    assert ami["OwnerId"] == A["AccountId"] and ami["VirtualizationType"] == "hvm"
    assert (
        task["SnapshotDetails"][0]["SnapshotId"]
        == (ami["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"])
    )
    assert sparse_sha256(Path(ami["ImageLocation"])) == sparse_sha256(Path(image["ImageLocation"]))
    assert client(api, B).describe_import_image_tasks()["ImportImageTasks"] == []
    ec2.deregister_image(ImageId=task["ImageId"])
