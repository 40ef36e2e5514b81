"""Helpers for integration tests that drive long-lived instances: the amilab CLI with a
test's environment, the instance records, an API server, the aws CLI, and SSH commands.

A test's state is a dict with at least `home` (AMILAB_HOME) and `env` (the variables the CLI
runs with); an API test's also has `url`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paramiko

from harness.launch.ssh import run
from tests.conftest import AMILAB, ROOT, run_amilab

BOOT = 600  # seconds; TCG on a shared 2-core machine
AWS = [sys.executable, "-m", "awscli"]
ACCOUNT = {  # the account an API test's server knows first
    "AccountId": "111111111111",
    "AccessKeyId": "AKIAAMILABTESTAAAAAA",
    "SecretAccessKey": "a-secret",
}


def cli(env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    res = run_amilab(*args, env=env["env"], timeout=900)
    if ok:
        assert res.returncode == 0, f"amilab {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return res


def cli_json(env: dict, *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def describe(env: dict, iid: str) -> dict:
    (res,) = cli_json(env, "describe-instances", iid)["Reservations"]
    return res["Instances"][0]


def wait_state(env: dict, iid: str, state: str, timeout: float = BOOT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = describe(env, iid)
        if got["State"]["Name"] == state:
            return got
        assert time.monotonic() < deadline, f"{iid} is {got['State']} after {timeout} s"
        time.sleep(0.5)


def record(env: dict, iid: str) -> dict:
    """The instance's record as the registry holds it (with its `Amilab` part)."""
    with sqlite3.connect(env["home"] / "registry.sqlite") as db:
        (text,) = db.execute("SELECT record FROM instances WHERE id = ?", (iid,)).fetchone()
    return json.loads(text)


def processes_in(directory: str) -> list[int]:
    """PIDs whose working directory is the instance's (its QEMUs run there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == directory:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def serve_api(home: Path, env: dict[str, str], accounts: list[dict], *extra: str) -> Any:
    """`amilab api serve` on a free port with these accounts: (the process, its URL)."""
    path = home / "accounts.yaml"
    path.write_text(json.dumps({"accounts": accounts}))  # JSON is YAML
    server = subprocess.Popen(
        [*AMILAB, "api", "serve", "--port", "0", "--accounts", str(path), *extra],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    line = server.stdout.readline() if server.stdout else ""
    assert "serving EC2 at http://" in line, line + (server.stderr.read() if server.stderr else "")
    return server, line.split(" at ", 1)[1].split()[0].rstrip("/")


def aws_ec2(url: str, who: dict, *args: str) -> subprocess.CompletedProcess[str]:
    """`aws ec2 ARGS` against the API server at `url` with `who`'s access key."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": who["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": who["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}  # fmt: skip
    return subprocess.run([*AWS, "--endpoint-url", url, "--output", "json", "ec2", *args],
                          env=env, capture_output=True, text=True, timeout=BOOT)  # fmt: skip


def aws_json(res: subprocess.CompletedProcess[str], args: tuple[str, ...]) -> Any:
    assert res.returncode == 0, f"aws ec2 {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return json.loads(res.stdout) if res.stdout.strip() else None


def sh(client: paramiko.SSHClient, command: str) -> str:
    res = run(client, command, timeout=120)
    assert res.status == 0, f"{command}: {res.status}\n{res.output}"
    return res.output.strip()


def curl(client: paramiko.SSHClient, path: str) -> tuple[str, str]:
    """The metadata service's answer to `path` from inside the guest: (HTTP code, body)."""
    out = run(client, f"curl -s -w '\\n%{{http_code}}' http://169.254.169.254{path}").output
    body, _, code = out.rpartition("\n")
    return code.strip(), body
