"""Hibernate and resume, as EC2 does (issue 28, item 2), on one real guest.

One build, one API server, one instance booted once for the whole flow (and a second launch,
not configured for hibernation, terminated while pending so it never costs a boot):
1. refusals before anything boots: a launch whose root volume cannot hold the type's RAM,
   and `--hibernate` of an instance launched without it (CLI exit 2, API HTTP 400), each with
   EC2's code;
2. the aws CLI launches it with `--hibernation-options Configured=true`; over SSH a process
   is started (its PID kept) and a file written to /dev/shm;
3. `amilab stop-instances --hibernate --wait`: stopped with Client.UserInitiatedHibernate,
   the state file beside the root volume and nothing half-written; the instance type and the
   kernel cannot change; `start-instances` resumes it: the process (same PID) and the file
   are there, the uptime went on, and SSH answers within seconds of the start (printed);
4. the same through the aws CLI (`aws ec2 stop-instances --hibernate`, `start-instances`);
5. a resume whose command line no longer matches (a volume attached while hibernated) boots
   cold and says so; the one cold boot of the module;
6. terminating a hibernated instance removes its saved state.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from harness.launch.ssh import run, ssh_answers, wait_for_ssh
from tests.conftest import AMILAB, ROOT, need, run_amilab
from tests.integration.builds import build

pytestmark = pytest.mark.integration
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

BOOT = 600  # seconds; TCG on a shared 2-core machine
RESUME_TO_SSH = 3.0  # what a resume must take on this machine, start call to SSH answer
ACCOUNT = {
    "AccountId": "111111111111",
    "AccessKeyId": "AKIAAMILABTESTAAAAAA",
    "SecretAccessKey": "a-secret",
}
AWS = [sys.executable, "-m", "awscli"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    need("ssh", "openssh-client")
    home = tmp_path_factory.mktemp("home")
    e = {"AMILAB_HOME": str(home), "AMILAB_STOP_TIMEOUT": "10",
         "AMILAB_ACCOUNT_ID": ACCOUNT["AccountId"]}  # fmt: skip
    built = build(ROOT / "build.yaml", home, "--image", "debian-pv", env=e)["Images"]
    ami = next(i for i in built if i["ImageType"] == "machine")
    accounts = home / "accounts.yaml"
    accounts.write_text(json.dumps({"accounts": [ACCOUNT]}))
    server = subprocess.Popen(
        [*AMILAB, "api", "serve", "--port", "0", "--accounts", str(accounts)],
        cwd=ROOT, env={**os.environ, **e}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    line = server.stdout.readline() if server.stdout else ""
    assert "serving EC2 at http://" in line, line
    state = {"home": home, "env": e, "ami": ami["ImageId"], "server": server,
             "url": line.split(" at ", 1)[1].split()[0].rstrip("/")}  # fmt: skip
    yield state
    for r in cli_json(state, "describe-instances")["Reservations"]:
        for i in r["Instances"]:
            if i["State"]["Name"] != "terminated":
                run_amilab("terminate-instances", i["InstanceId"], "--wait", env=e)
    server.terminate()
    _, err = server.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]


def cli(env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    res = run_amilab(*args, env=env["env"], timeout=900)
    if ok:
        assert res.returncode == 0, f"amilab {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return res


def cli_json(env: dict, *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def aws(env: dict, *args: str, ok: bool = True) -> Any:
    aws_env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCOUNT["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": ACCOUNT["SecretAccessKey"],
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
               "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}  # fmt: skip
    res = subprocess.run([*AWS, "--endpoint-url", env["url"], "--output", "json", "ec2", *args],
                         env=aws_env, capture_output=True, text=True, timeout=BOOT)  # fmt: skip
    if not ok:
        return res
    assert res.returncode == 0, f"aws ec2 {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return json.loads(res.stdout) if res.stdout.strip() else None


def describe(env: dict, iid: str) -> dict:
    (res,) = cli_json(env, "describe-instances", iid)["Reservations"]
    return res["Instances"][0]


def record(env: dict, iid: str) -> dict:
    with sqlite3.connect(env["home"] / "registry.sqlite") as db:
        (text,) = db.execute("SELECT record FROM instances WHERE id = ?", (iid,)).fetchone()
    return json.loads(text)


def wait_state(env: dict, iid: str, state: str, timeout: float = BOOT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = describe(env, iid)
        if got["State"]["Name"] == state:
            return got
        assert time.monotonic() < deadline, f"{iid} is {got['State']} after {timeout} s"
        time.sleep(0.5)


def login(env: dict, iid: str, timeout: float = BOOT) -> paramiko.SSHClient:
    rec = record(env, iid)
    key = paramiko.RSAKey.from_private_key_file(str(env["pem"]))
    port = int(rec["Amilab"].get("SshPort") or 22)
    return wait_for_ssh(port, key, timeout, lambda: None, host=rec["PublicIpAddress"]).client


def sh(client: paramiko.SSHClient, command: str) -> str:
    res = run(client, command, timeout=120)
    assert res.status == 0, f"{command}: {res.status}\n{res.output}"
    return res.output.strip()


def uptime(client: paramiko.SSHClient) -> float:
    return float(sh(client, "cat /proc/uptime").split()[0])


def state_files(env: dict) -> list[str]:
    return sorted(p.name for p in (env["home"] / "volumes").iterdir() if "hibernation" in p.name)


def qemus_of(env: dict, iid: str) -> list[int]:
    """PIDs whose working directory is the instance's (its QEMUs run there)."""
    directory = record(env, iid)["Amilab"]["Dir"]
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == directory:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def hibernated(env: dict, iid: str) -> dict:
    """The instance as a hibernation leaves it: stopped with EC2's reason, its RAM in one
    complete file beside its root volume, no QEMU left."""
    got = wait_state(env, iid, "stopped", timeout=300)
    assert got["StateReason"] == {
        "Code": "Client.UserInitiatedHibernate",
        "Message": "Client.UserInitiatedHibernate: User initiated hibernate",
    }
    assert got["StateTransitionReason"] == got["StateReason"]["Message"]
    root = got["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert state_files(env) == [f"{root}.hibernation"]  # complete: no .partial beside it
    saved = record(env, iid)["Amilab"]["Hibernation"]
    assert Path(saved["File"]).stat().st_size == saved["Bytes"] > 0
    assert qemus_of(env, iid) == []
    return saved


def resume(env: dict, iid: str, start: Any) -> tuple[paramiko.SSHClient, float]:
    """Start it with `start()` and time the first SSH command that answers. A fresh probe
    every quarter second until sshd's banner comes: the harness's own probing (a new
    connection each second) would add up to a second of its own to what is measured."""
    t0 = time.monotonic()
    start()
    rec = record(env, iid)
    port, host = int(rec["Amilab"].get("SshPort") or 22), rec["PublicIpAddress"]
    while True:
        try:
            if ssh_answers(port, host, wait=0.25):
                break
        except OSError:  # nothing listens on the address yet
            time.sleep(0.05)
        assert time.monotonic() - t0 < 60, f"{iid}: no SSH banner 60 s after the start"
    client = login(env, iid, timeout=60)
    sh(client, "true")
    return client, time.monotonic() - t0


def test_hibernate_and_resume(env: dict) -> None:
    t0 = time.monotonic()
    made = aws(env, "create-key-pair", "--key-name", "k1")
    env["pem"] = env["home"] / "k1.pem"
    env["pem"].write_text(made["KeyMaterial"])
    env["pem"].chmod(0o600)

    # 1. refusals before anything boots: m1.medium has 3.75 GiB of RAM, the root 2 GiB
    res = cli(env, "run-instances", env["ami"], "--instance-type", "m1.medium",
              "--hibernation-options", "Configured=true", ok=False)  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith(
        "amilab: UnsupportedHibernationConfiguration: For hibernation, the root device volume"
    ), res.stderr  # fmt: skip
    res = aws(env, "run-instances", "--image-id", env["ami"], "--instance-type", "m1.medium",
              "--hibernation-options", "Configured=true", "--count", "1", ok=False)  # fmt: skip
    assert res.returncode != 0 and "(UnsupportedHibernationConfiguration)" in res.stderr
    assert cli_json(env, "describe-instances")["Reservations"] == []
    (plain,) = cli_json(env, "run-instances", env["ami"], "--key-name", "k1")["Instances"]
    p = plain["InstanceId"]
    assert plain["HibernationOptions"] == {"Configured": False}
    res = cli(env, "stop-instances", "--hibernate", p, ok=False)
    assert res.returncode == 2 and (
        "UnsupportedHibernationConfiguration: The instance can't be hibernated because it was "
        f"not configured at launch for hibernation: {p}" in res.stderr
    ), res.stderr
    res = aws(env, "stop-instances", "--hibernate", "--instance-ids", p, ok=False)
    assert res.returncode != 0 and "(UnsupportedHibernationConfiguration)" in res.stderr
    assert describe(env, p)["State"]["Name"] in ("pending", "running")  # untouched
    cli(env, "terminate-instances", p, "--wait")

    # 2. the one boot
    launched = aws(env, "run-instances", "--image-id", env["ami"], "--key-name", "k1",
                   "--count", "1", "--hibernation-options", "Configured=true")  # fmt: skip
    (inst,) = launched["Instances"]
    iid = inst["InstanceId"]
    assert inst["HibernationOptions"] == {"Configured": True}
    wait_state(env, iid, "running")
    client = login(env, iid)
    print(f"booted and logged in after {time.monotonic() - t0:.1f} s")
    pid = sh(client, "setsid sleep 9999 > /dev/null 2>&1 < /dev/null & echo $!")
    token = os.urandom(8).hex()
    sh(client, f"echo {token} > /dev/shm/hibernated.txt")
    before = uptime(client)
    client.close()
    assert describe(env, iid)["HibernationOptions"] == {"Configured": True}

    # 3. hibernate with amilab's CLI, resume with start-instances
    res = cli(env, "stop-instances", "--hibernate", "--wait", iid)
    assert "-> stopped" in res.stdout and "hibernated at" in res.stdout, res.stdout
    saved = hibernated(env, iid)
    print(f"saved {saved['Bytes'] / 2**20:.0f} MiB by {saved['QemuVersion']}")
    for change in (("--instance-type", "m1.large"), ("--kernel", inst["KernelId"])):
        res = cli(env, "modify-instance-attribute", iid, *change, ok=False)
        assert res.returncode == 2 and "IncorrectInstanceState" in res.stderr, res.stderr
        assert "hibernated" in res.stderr
    outputs: list[str] = []
    client, seconds = resume(
        env, iid, lambda: outputs.append(cli(env, "start-instances", iid).stdout)
    )
    print(f"resume (amilab start-instances) to SSH: {seconds:.2f} s")
    assert "resuming from hibernation" in outputs[0], outputs
    assert sh(client, f"cat /proc/{pid}/cmdline | tr '\\0' ' '").strip() == "sleep 9999"
    assert sh(client, "cat /dev/shm/hibernated.txt") == token
    after = uptime(client)
    assert after >= before, (before, after)  # went on from where it was, not from zero
    client.close()
    assert seconds <= RESUME_TO_SSH, f"SSH answered {seconds:.2f} s after the start"
    assert state_files(env) == []  # spent
    got = describe(env, iid)
    assert got["State"]["Name"] == "running" and got["StateTransitionReason"] == ""
    assert record(env, iid)["Amilab"]["Resume"]["Note"] == "resumed from hibernation"

    # 4. the same through the aws CLI
    (stopping,) = aws(env, "stop-instances", "--hibernate", "--instance-ids", iid)[
        "StoppingInstances"]  # fmt: skip
    assert stopping["CurrentState"]["Name"] == "stopping"
    hibernated(env, iid)
    (shown,) = aws(env, "describe-instances", "--instance-ids", iid)["Reservations"][0][
        "Instances"]  # fmt: skip
    assert shown["HibernationOptions"] == {"Configured": True}
    assert shown["StateReason"]["Code"] == "Client.UserInitiatedHibernate"
    client, seconds = resume(env, iid, lambda: aws(env, "start-instances", "--instance-ids", iid))
    print(f"resume (aws ec2 start-instances) to SSH: {seconds:.2f} s")
    assert sh(client, f"cat /proc/{pid}/cmdline | tr '\\0' ' '").strip() == "sleep 9999"
    assert sh(client, "cat /dev/shm/hibernated.txt") == token
    client.close()

    # 5. a volume attached while hibernated: its QEMU has another device, so a cold boot
    cli(env, "stop-instances", "--hibernate", "--wait", iid)
    hibernated(env, iid)
    vol = cli_json(env, "create-volume", "--size", "1")
    cli(env, "attach-volume", "--volume-id", vol["VolumeId"], "--instance-id", iid,
        "--device", "/dev/sdf")  # fmt: skip
    res = cli(env, "start-instances", "--wait", iid)
    cold = "cold boot: the hibernated state was not resumed: the instance's QEMU command line"
    assert cold in res.stdout, res.stdout
    got = wait_state(env, iid, "running")
    assert got["StateTransitionReason"].startswith("amilab: cold boot: "), got
    assert state_files(env) == []  # discarded: the disk moves on without it
    client = login(env, iid)
    assert run(client, f"test -e /proc/{pid}").status != 0  # a new boot: the process is gone
    assert run(client, "test -e /dev/shm/hibernated.txt").status != 0
    client.close()

    # 6. terminated while hibernated: the saved state goes too
    cli(env, "stop-instances", "--hibernate", "--wait", iid)
    hibernated(env, iid)
    cli(env, "terminate-instances", "--wait", iid)
    assert state_files(env) == []
    print(f"whole flow {time.monotonic() - t0:.1f} s")
