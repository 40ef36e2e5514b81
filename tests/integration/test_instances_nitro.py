"""Instance types decide how disks appear (issue 15, item 4): on Nitro types (t3) the root is
an NVMe device, on Xen types (t2) it is not. The default HVM recipe (cloud kernel, NVMe built
in) boots on t3.micro from /dev/nvme0n1; the same recipe with Debian's generic kernel and a
generated ramdisk that leaves out the NVMe driver boots on t2.micro and fails on t3.micro
within 60 s, the console's reason in the instance's StateReason, as its users need to find
out before EC2 does."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import paramiko
import pytest

from harness.launch.ssh import run, wait_for_ssh
from tests.conftest import run_amilab
from tests.integration.builds import build

pytestmark = pytest.mark.integration

BOOT = 600

KERNEL = """\
name: generic-no-nvme
description: Debian's generic kernel; its generated ramdisk lacks the NVMe driver
package: linux-image-amd64
ramdisk_modules: [virtio_pci, virtio_net, virtio_blk, virtio_scsi, sd_mod, ext4]
cmdline: console=ttyS0
"""

RECIPE = """\
images:
  - name: {name}
    release: bookworm
    elements: [ec2-base]
    kernel: {kernel}
    ramdisk: generated
    modules: install
    virtualization: hvm
    boot: bios
    disk: {{size: 2G, label: cloudimg-rootfs, partitioning: gpt, formats: [raw]}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("home")
    defs = tmp_path_factory.mktemp("kernels")
    (defs / "generic-no-nvme.yaml").write_text(KERNEL)
    extra = {"AMILAB_KERNELS_PATH": str(defs)}
    e: dict[str, Any] = {"home": home, "env": {"AMILAB_HOME": str(home), **extra}}
    recipes = tmp_path_factory.mktemp("recipes")
    for name, kernel in (("hvm-cloud", "debian-cloud"), ("hvm-no-nvme", "generic-no-nvme")):
        path = recipes / f"{name}.yaml"
        path.write_text(RECIPE.format(name=name, kernel=kernel))
        built = build(path, home, env=extra)["Images"]
        e[name] = next(i for i in built if i["ImageType"] == "machine")
    pem = home / "k.pem"
    res = run_amilab("create-key-pair", "--key-name", "k", env=e["env"], check=True)
    pem.write_text(res.stdout)
    pem.chmod(0o600)
    e["pem"] = pem
    yield e
    out = run_amilab("describe-instances", "--json", env=e["env"], check=True)
    for r in json.loads(out.stdout)["Reservations"]:
        for i in r["Instances"]:
            if i["State"]["Name"] != "terminated":
                run_amilab("terminate-instances", i["InstanceId"], "--wait", env=e["env"])


def _launch(env: dict, image: str, itype: str) -> dict:
    res = run_amilab("run-instances", image, "--instance-type", itype, "--key-name", "k",
                     "--json", env=env["env"], check=True)  # fmt: skip
    return json.loads(res.stdout)["Instances"][0]


def _describe(env: dict, iid: str) -> dict:
    out = run_amilab("describe-instances", iid, "--json", env=env["env"], check=True)
    return json.loads(out.stdout)["Reservations"][0]["Instances"][0]


def _root_device(env: dict, inst: dict) -> str:
    key = paramiko.Ed25519Key.from_private_key_file(str(env["pem"]))
    with sqlite3.connect(env["home"] / "registry.sqlite") as db:
        (port,) = db.execute(
            "SELECT json_extract(record, '$.Amilab.SshPort') FROM instances WHERE id = ?",
            (inst["InstanceId"],),
        ).fetchone()
    login = wait_for_ssh(port, key, BOOT, lambda: None, host=inst["PublicIpAddress"])
    try:
        return run(login.client, "findmnt -n -o SOURCE /").output.strip()
    finally:
        login.client.close()
        run_amilab("terminate-instances", inst["InstanceId"], "--wait", env=env["env"])


def test_default_hvm_image_on_nitro_has_an_nvme_root(env: dict) -> None:
    inst = _launch(env, env["hvm-cloud"]["ImageId"], "t3.micro")
    assert _root_device(env, inst).startswith("/dev/nvme0n1")


def test_ramdisk_without_nvme_boots_on_xen_and_fails_on_nitro(env: dict) -> None:
    image = env["hvm-no-nvme"]["ImageId"]
    assert _root_device(env, _launch(env, image, "t2.micro")).startswith("/dev/vda")
    t0 = time.monotonic()
    inst = _launch(env, image, "t3.micro")
    while (got := _describe(env, inst["InstanceId"]))["State"]["Name"] != "stopped":
        assert time.monotonic() - t0 < 60, f"still {got['State']['Name']} after 60 s"
        time.sleep(0.5)
    print(f"t3.micro: stopped {time.monotonic() - t0:.1f} s after run-instances: "
          f"{got['StateReason']['Message']}")  # fmt: skip
    assert "could not find the root" in got["StateReason"]["Message"]
    console = run_amilab("get-console-output", inst["InstanceId"], env=env["env"]).stdout
    assert "ROOT NOT FOUND" in console
