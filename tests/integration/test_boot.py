"""Booting real guests: metadata from inside the guest, no QEMU outliving the harness
(SIGKILL, Ctrl-C, SIGTERM), the serial console, and the qemu-runner runner."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from builder.images.registry import Registry
from builder.steps import Step, run_steps
from harness.launch import accel
from harness.launch import instance as instances
from harness.launch.plan import make_plan
from harness.launch.ssh import run
from harness.launch.steps import LAUNCH_STEPS, Instance, LaunchOptions, WaitForSsh
from tests.conftest import AMILAB, ROOT
from tests.integration.builds import debian_pv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pv(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    ami = debian_pv(home)
    return {"home": home, "ami": ami["ImageId"], "aki": ami["KernelId"], "ari": ami["RamdiskId"]}


class _Curl(Step[Instance]):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.results: dict[str, tuple[str, str]] = {}

    def run(self, s: Instance) -> None:
        for path in self.paths:
            out = run(s.ssh, f"curl -s -w '\\n%{{http_code}}' http://169.254.169.254{path}").output
            body, _, code = out.rpartition("\n")
            self.results[path] = (code, body)


def test_guest_reads_its_metadata(pv: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMILAB_HOME", str(pv["home"]))
    plan = make_plan(Registry().find(pv["ami"]))
    inst = Instance(plan, LaunchOptions(accelerator=accel.choose("auto"), ssh_timeout=600))
    curl = _Curl([
        "/latest/meta-data/kernel-id", "/2008-02-01/meta-data/kernel-id",
        "/latest/meta-data/ramdisk-id", "/latest/meta-data/instance-id", "/latest/meta-data/",
        "/latest/meta-data/public-keys/", "/latest/meta-data/nope",
    ])  # fmt: skip
    run_steps([cls() for cls in LAUNCH_STEPS] + [WaitForSsh(), curl], inst)
    r = curl.results
    assert r["/latest/meta-data/kernel-id"] == ("200", pv["aki"])
    assert r["/2008-02-01/meta-data/kernel-id"] == ("200", pv["aki"])
    assert r["/latest/meta-data/ramdisk-id"] == ("200", pv["ari"])
    assert r["/latest/meta-data/instance-id"] == ("200", inst.instance_id)
    assert "public-keys/" in r["/latest/meta-data/"][1].split("\n")
    assert r["/latest/meta-data/public-keys/"] == ("200", f"0=amilab-{inst.instance_id}")
    assert r["/latest/meta-data/nope"][0] == "404"
    assert inst.qemu is not None and not inst.qemu.alive()
    # slirp ran in a QEMU of its own (harness.launch.machine.split_network), gone with the guest's
    assert inst.net is not None and inst.net_argv[:3] == [inst.argv[0], "-machine", "none"]
    assert not inst.net.alive()


def _default_sigint() -> None:
    # a test run started in the background inherits SIGINT ignored; a user's harness does not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*AMILAB, *args], cwd=ROOT, env={**os.environ, "AMILAB_HOME": str(home)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _qemu_of(home: Path, timeout: float = 120) -> tuple[Path, int]:
    """Wait for an instance's QEMU to run; (instance dir, QEMU PID)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid_file in (home / "instances").glob("i-*/qemu.pid"):
            try:
                return pid_file.parent, int(pid_file.read_text())
            except (OSError, ValueError):
                pass
        time.sleep(0.1)
    raise AssertionError("no QEMU started")


def _network_of(inst_dir: Path) -> int:
    """The PID of the instance's network QEMU (written once it listens)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return int((inst_dir / "network.pid").read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError("no network process started")


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_sigkill_of_the_harness_takes_qemu_down(pv: dict) -> None:
    proc = _start(pv["home"], "smoke", pv["ami"])
    inst_dir, qemu = _qemu_of(pv["home"])
    network = _network_of(inst_dir)
    time.sleep(2)  # mid-boot
    proc.kill()
    proc.wait()
    assert _gone(qemu, 5.0), "QEMU outlived the SIGKILLed harness"
    assert _gone(network, 5.0), "the network's QEMU outlived the SIGKILLed harness"
    # the next launch removes what the killed harness could not
    os.environ["AMILAB_HOME"] = str(pv["home"])
    try:
        assert inst_dir.name in instances.reap_stale()
    finally:
        del os.environ["AMILAB_HOME"]
    assert not inst_dir.exists()


@pytest.mark.parametrize("sig,keep", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                      (signal.SIGINT, True)])  # fmt: skip
def test_interrupt_stops_qemu_and_cleans_up(pv: dict, sig: int, keep: bool) -> None:
    proc = _start(pv["home"], "smoke", pv["ami"], *(["--keep"] if keep else []))
    inst_dir, qemu = _qemu_of(pv["home"])
    network = _network_of(inst_dir)
    time.sleep(2)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    assert _gone(qemu, 5.0) and _gone(network, 5.0)
    assert inst_dir.exists() == keep
    if keep:
        subprocess.run(["rm", "-rf", str(inst_dir)], check=True)


def test_console_attaches_and_ctrl_bracket_detaches(pv: dict) -> None:
    proc = _start(pv["home"], "boot", pv["ami"], "--console")
    assert proc.stdout is not None and proc.stdin is not None
    out = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + 600
    while b"login:" not in seen and time.monotonic() < deadline and proc.poll() is None:
        if select.select([out], [], [], 0.5)[0]:
            seen += os.read(out, 65536)
    assert b"Linux version" in seen and b"login:" in seen, seen[-2000:]
    _, qemu = _qemu_of(pv["home"])
    proc.stdin.write("\x1d")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0
    assert _gone(qemu, 5.0)


def test_runner_boots_without_amilab(pv: dict, tmp_path: Path) -> None:
    """The pyz runs under an isolated interpreter (no site-packages: neither amilab nor
    qemu-runner importable) from another directory, and the guest gets its key from the
    metadata service beside it."""
    out = tmp_path / "pv.pyz"
    result = subprocess.run(
        [*AMILAB, "boot", pv["ami"], "--runner", str(out)], cwd=ROOT,
        env={**os.environ, "AMILAB_HOME": str(pv["home"])}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    run_line = next(line for line in result.stdout.splitlines() if line.startswith("run:"))
    kernel = run_line.split()[-1]
    port = int(re.search(r"-p (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    # the runner runs QEMU as its child (no parent-death signal there): a session of its own
    # lets the test stop both
    runner = subprocess.Popen(
        [sys.executable, "-I", "-S", str(out), kernel], cwd="/", stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "pv.pyz.d" / "id_ed25519"))
        deadline = time.monotonic() + 600
        while True:
            assert runner.poll() is None and time.monotonic() < deadline
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect("127.0.0.1", port=port, username="root", pkey=key,
                               look_for_keys=False, allow_agent=False, timeout=5,
                               banner_timeout=5, auth_timeout=5)  # fmt: skip
                break
            except (paramiko.SSHException, OSError, EOFError):
                client.close()
                time.sleep(1)
        assert run(client, "uname -r").status == 0
        client.close()
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
