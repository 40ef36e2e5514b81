"""cloud-init, as Debian ships it and forced to its Ec2 datasource (the debian-cloud-init
recipe), on the first boot of an instance: what cloud-init itself reports (`cloud-init query`,
its instance-data, status and result, its log) must be what amilab's metadata service served
this instance, read with IMDSv2 tokens (the launch requires them), and the user-data script
given at launch must have run.

The launch goes through the harness's own pipeline (as `amilab boot`/`smoke` do) rather than
`amilab smoke`: the marker the user-data script writes holds a token only this test knows.
The machine carries EC2's DMI identity (harness.launch.machine.ec2_system_uuid), by which cloud-init
22.4 recognises EC2 and, only there, asks for IMDSv2 tokens.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from builder.images.registry import Registry
from builder.steps import Step, run_steps
from harness.launch import accel
from harness.launch.machine import ec2_system_uuid
from harness.launch.plan import make_plan
from harness.launch.ssh import BootFailed, SshTimeout, run
from harness.launch.steps import LAUNCH_STEPS, Instance, LaunchOptions, WaitForSsh
from harness.smoke import checks
from tests.conftest import ROOT
from tests.integration.builds import build

pytestmark = pytest.mark.integration

RECIPE = "debian-cloud-init"
MARKER = "/var/lib/amilab-user-data.marker"
# Far above what it takes on this 2-core machine under TCG (SSH ~45 s, cloud-init done ~65 s)
SSH_TIMEOUT = 600
CLOUD_INIT_TIMEOUT = 600


class InGuest(Step[Instance]):
    """What the guest says once cloud-init has finished, and what the service served."""

    name = "cloud-init"

    def __init__(self) -> None:
        self.out: dict[str, Any] = {}

    def sh(self, s: Instance, command: str) -> str:
        result = run(s.ssh, command, timeout=CLOUD_INIT_TIMEOUT)
        assert result.status == 0, f"{command} exited {result.status}:\n{result.output}"
        return result.output

    def run(self, s: Instance) -> None:
        assert s.dir is not None and s.qemu_started_at is not None
        # the exact tree the service answered from (imds_cgi walks this document)
        self.out["served"] = json.loads(s.dir.metadata_doc.with_suffix(".json").read_text())
        # the recipe's own checks and the built-in ones (kernel, modules, metadata with a
        # token), as `amilab smoke` runs them; cloud-init-done waits for the last stage
        recipe = s.plan.image.extra.get("recipe") or {}
        todo = checks.builtin_checks(
            s.plan.expected_release, s.plan.kernel_id, s.plan.ramdisk_id, recipe.get("checks") or {}
        )
        token = checks.new_token()
        script = run(s.ssh, checks.script(todo, token), timeout=CLOUD_INIT_TIMEOUT)
        self.out["seconds_to_checks_done"] = time.monotonic() - s.qemu_started_at
        self.out["checks"] = {r.name: r for r in checks.parse(todo, script.output, token)}
        self.out["instance_data"] = json.loads(self.sh(s, "cat /run/cloud-init/instance-data.json"))
        self.out["result"] = json.loads(self.sh(s, "cat /run/cloud-init/result.json"))
        self.out["status"] = json.loads(self.sh(s, "cat /run/cloud-init/status.json"))
        # the guest's clock and uptime together, to place status.json's times on the boot
        self.out["clock"] = self.sh(s, "date +%s.%N; cut -d' ' -f1 /proc/uptime").split()
        self.out["marker"] = self.sh(s, f"cat {MARKER} 2>&1 || true")
        self.out["authorized_keys"] = self.sh(s, "cat /root/.ssh/authorized_keys")
        self.out["hostname"] = self.sh(s, "hostname").strip()
        self.out["agent"] = self.sh(s, "systemctl is-enabled ec2-fetch-ssh-key.service || true")
        self.out["log"] = self.sh(s, "cat /var/log/cloud-init.log")
        self.out["dmi"] = self.sh(
            s, "cd /sys/class/dmi/id && cat sys_vendor product_name product_uuid product_serial"
        ).split("\n")


def _launch(image_id: str, user_data: bytes) -> tuple[Instance, dict[str, Any]]:
    plan = make_plan(Registry().find(image_id, "machine"))
    options = LaunchOptions(
        accelerator=accel.choose("auto"),
        ssh_timeout=SSH_TIMEOUT,
        metadata={"user_data": user_data, "http_tokens": "required"},
    )
    inst = Instance(plan, options)
    guest = InGuest()
    try:
        run_steps([cls() for cls in LAUNCH_STEPS] + [WaitForSsh(), guest], inst)
    except (BootFailed, SshTimeout) as e:
        tail = inst.watcher.tail() if inst.watcher else ""
        raise AssertionError(f"{e}\n--- console ---\n{tail}") from None
    return inst, guest.out


def test_cloud_init_ec2_datasource_reads_the_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.monotonic()
    home = tmp_path / "home"
    images = build(ROOT / "build.yaml", home, "--image", RECIPE)["Images"]
    ami = next(i for i in images if i["ImageType"] == "machine")
    built = time.monotonic()
    monkeypatch.setenv("AMILAB_HOME", str(home))

    token = secrets.token_hex(16)
    user_data = f"#!/bin/sh\nset -e\nprintf '%s\\n' '{token}' > {MARKER}\n".encode()
    inst, out = _launch(ami["ImageId"], user_data)
    assert inst.dir is not None
    print(f"\nconsole log: {inst.dir.console_log}")  # shown with a failure

    served = out["served"]
    md = served["latest"]["meta-data"]
    instance_id = md["instance-id"]
    key = md["public-keys"]["0"]["openssh-key"].strip()
    assert instance_id == inst.instance_id and key == inst.public_key
    # the launch really required tokens, and served the script given
    assert served["/imds"]["http_tokens"] == "required"
    assert served["latest"]["user-data"] == user_data.decode()

    failed = {n: r.to_json() for n, r in out["checks"].items() if not r.passed}
    assert not failed, f"recipe checks failed: {json.dumps(failed, indent=1)}"

    # cloud-init's own view (`cloud-init query`, the recipe's cloud-init-metadata check)
    query = dict(
        line.split(": ", 1)
        for line in out["checks"]["cloud-init-metadata"].actual.splitlines()
        if ": " in line
    )
    assert query["instance-id"] == instance_id
    assert query["local-hostname"] == md["local-hostname"].split(".")[0]
    assert query["public-ssh-keys"] == key
    # identified as EC2 by the machine's DMI identity: the Ec2 datasource with IMDSv2 tokens
    assert query["platform"] == "ec2" and query["cloud-name"] == "aws"
    uuid = ec2_system_uuid(instance_id)
    assert out["dmi"][:4] == ["Amazon EC2", md["instance-type"], uuid, uuid], out["dmi"]

    # the same from its instance-data, including what it crawled verbatim
    data = out["instance_data"]
    v1, crawled = data["v1"], data["ds"]["meta-data"]
    assert v1["instance_id"] == instance_id and v1["platform"] == "ec2"
    assert v1["public_ssh_keys"] == [key]
    assert crawled["instance-id"] == instance_id
    assert crawled["hostname"] == md["hostname"]
    assert crawled["local-hostname"] == md["local-hostname"]
    assert crawled["public-keys"] == {md["public-keys"][""].split("=", 1)[1]: [key]}
    assert data["ds"]["_metadata_api_version"] == "2021-03-23"
    assert data["ds"]["dynamic"]["instance-identity"]["document"]["instanceId"] == instance_id

    # finished, on the Ec2 datasource, with no errors in any stage
    result = out["result"]["v1"]
    assert re.fullmatch(r"DataSourceEc2(Local)?( .*)?", result["datasource"]), result
    assert result["errors"] == [], result
    stages = out["status"]["v1"]
    for stage in ("init-local", "init", "modules-config", "modules-final"):
        assert stages[stage]["errors"] == [], (stage, stages[stage])
        assert stages[stage]["finished"], (stage, stages[stage])

    # what cloud-init did with it: the hostname, root's key (ec2-base's agent is off), and
    # the user-data script
    assert out["hostname"] == md["local-hostname"].split(".")[0]
    assert out["agent"].strip() == "disabled"
    assert key in out["authorized_keys"].splitlines()
    assert out["marker"].strip() == token, f"user-data marker: {out['marker']!r}"

    # its log: a token first, then every request with it (a token-less one would be 401)
    log = out["log"]
    assert "Fetching Ec2 IMDSv2 API Token" in log
    assert "Read from http://169.254.169.254/latest/api/token (200" in log
    # nothing refused or missing (EC2's service would have answered every request it made),
    # and no warning or error from any stage
    problems = [
        line
        for line in log.splitlines()
        if re.search(r"\[(WARNING|ERROR|CRITICAL)\]|bad status code|\([45]\d\d, ", line)
    ]
    assert not problems, "\n".join(problems)

    version = re.search(r"Cloud-init v\. (\S+) running", log)
    now, uptime = (float(x) for x in out["clock"])
    final_up = uptime - (now - stages["modules-final"]["finished"])
    print(
        f"\ncloud-init {version.group(1) if version else '?'} ({inst.options.accelerator.name}):"
        f" build {built - t0:.0f} s, SSH {inst.seconds_to_ssh:.1f} s after QEMU start,"
        f" cloud-init done at guest uptime {final_up:.1f} s,"
        f" checks done {out['seconds_to_checks_done']:.1f} s after QEMU start,"
        f" test {time.monotonic() - t0:.0f} s"
    )
