"""`amilab matrix` on a fleet (issue 14's acceptance): a real `dask scheduler`, two real
`dask worker` processes on 127.0.0.2 and 127.0.0.3 (each with its own AMILAB_HOME and cache:
two hosts as far as amilab can tell) and moto's standalone S3 server on 127.0.0.4.

One module-scoped fleet serves every test. The cells are cheap: the default paravirtual
image on its own kernel × http_tokens × instance type (every one boots and passes)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psutil
import pytest

from tests.conftest import AMILAB, ROOT, run_amilab

pytestmark = pytest.mark.integration

TIMEOUT = 900
BIN = Path(sys.executable).parent
BUCKET = "amilab-fleet"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
SIX = ["--image", "debian-pv", "--http-tokens", "optional", "--http-tokens", "required",
       "--instance-type", "m1.small", "--instance-type", "m1.large",
       "--instance-type", "t1.micro"]  # fmt: skip
QEMU = "qemu-system-x86_64"


def _port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} ended with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {host}:{port}")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background test run inherits it ignored


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.home = root / "client"
        self.s3 = ""
        self.scheduler = ""
        self.workers: dict[str, dict[str, Path]] = {}  # host -> its home and cache

    def start(self, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.root / log, "wb")  # noqa: SIM115 - the process writes it until the end
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def worker_env(self, host: str) -> dict[str, str]:
        w = self.workers[host]
        return {**os.environ, **CREDS, "AMILAB_HOME": str(w["home"]),
                "XDG_CACHE_HOME": str(w["cache"]), "PYTHONPATH": str(ROOT)}  # fmt: skip

    def start_worker(self, host: str, scheduler: str, *extra: str, log: str = "") -> None:
        self.workers.setdefault(host, {"home": self.root / host / "home",
                                       "cache": self.root / host / "cache"})  # fmt: skip
        argv = [str(BIN / "dask"), "worker", scheduler, "--host", host, "--nthreads", "1",
                "--resources", "VM=1", "--memory-limit", "0", "--no-dashboard",
                "--preload", "harness.matrix.worker", *extra]  # fmt: skip
        self.start(argv, self.worker_env(host), log or f"worker-{host}.log")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def env(self) -> dict[str, str]:
        return {"AMILAB_HOME": str(self.home), **CREDS}

    def remote(self, *args: str) -> list[str]:
        return ["--scheduler", self.scheduler, "--artifacts", f"s3://{BUCKET}/cells",
                "--endpoint-url", self.s3, *args]  # fmt: skip

    def worker_pids(self) -> set[int]:
        """The dask worker processes (nannies and the workers they run)."""
        pids = set()
        for proc in self.procs:
            try:
                p = psutil.Process(proc.pid)
                pids |= {p.pid, *(c.pid for c in p.children(recursive=True))}
            except psutil.NoSuchProcess:
                pass
        return pids

    def qemus(self) -> set[int]:
        """Every QEMU under the processes this fleet started, found by PID."""
        found = set()
        for proc in self.procs:
            try:
                kids = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for k in kids:
                try:
                    if k.name().startswith("qemu-system"):
                        found.add(k.pid)
                except psutil.NoSuchProcess:
                    pass
        return found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        port = _port("127.0.0.4")
        s3 = f.start([str(BIN / "moto_server"), "-H", "127.0.0.4", "-p", str(port)],
                     {**os.environ, **CREDS}, "moto.log")  # fmt: skip
        _wait_port("127.0.0.4", port, s3)
        f.s3 = f"http://127.0.0.4:{port}"
        boto3.client("s3", endpoint_url=f.s3, **_creds()).create_bucket(Bucket=BUCKET)
        sport = _port("127.0.0.1")
        argv = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(sport),
                "--no-dashboard"]  # fmt: skip
        sched = f.start(argv, dict(os.environ), "scheduler.log")
        _wait_port("127.0.0.1", sport, sched)
        f.scheduler = f"tcp://127.0.0.1:{sport}"
        for host in ("127.0.0.2", "127.0.0.3"):
            f.start_worker(host, f.scheduler)
        yield f
    finally:
        f.stop()


def _creds() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "region_name": "us-east-1"}  # fmt: skip


def _matrix(fleet: Fleet, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    result = run_amilab("matrix", *args, env=fleet.env(), timeout=TIMEOUT)
    return result, time.monotonic() - t0


@pytest.fixture(scope="module")
def runs(fleet: Fleet) -> dict:
    """The six cells on the fleet (the client builds the image first), then locally on the
    embedded cluster."""
    out = fleet.root
    build = run_amilab("build", "build.yaml", "--image", "debian-pv", env=fleet.env(),
                       timeout=TIMEOUT)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    remote, t_remote = _matrix(fleet, *fleet.remote(*SIX, "--json-file", str(out / "fleet.json")))
    local, t_local = _matrix(fleet, *SIX, "--json-file", str(out / "local.json"))
    print(f"six cells: fleet {t_remote:.0f} s, local {t_local:.0f} s")
    return {"local": local, "fleet": remote, "stderr": remote.stderr}


def _cells(result: subprocess.CompletedProcess[str], report: Path) -> list[dict]:
    assert report.exists(), result.stderr[-4000:]
    return json.loads(report.read_text())["Cells"]


def test_fleet_runs_cells_on_both_workers_with_the_local_verdicts(fleet: Fleet, runs: dict) -> None:
    cells = _cells(runs["fleet"], fleet.root / "fleet.json")
    local = {c["Cell"]: c["Status"] for c in _cells(runs["local"], fleet.root / "local.json")}
    shown = {c["Cell"]: (c["Status"], c["Class"], c["Worker"]) for c in cells}
    assert runs["fleet"].returncode == 0, (shown, runs["fleet"].stderr[-3000:])
    assert runs["local"].returncode == 0, local
    assert len(cells) == 6 and len({c["Cell"] for c in cells}) == 6
    assert {c["Cell"]: c["Status"] for c in cells} == local
    assert set(local.values()) == {"PASS"}
    hosts = {c["Worker"]["Address"].split("//")[1].split(":")[0] for c in cells}
    assert hosts == {"127.0.0.2", "127.0.0.3"}, [c["Worker"] for c in cells]
    assert all(c["Worker"]["Accelerator"] in ("tcg", "kvm") for c in cells)
    # the console logs came back to the client's home; the worker's path is kept beside it
    for c in cells:
        log = Path(c["ConsoleLog"])
        assert log.is_relative_to(fleet.home) and "Linux version" in log.read_text()
        assert not c["WorkerConsoleLog"].startswith(str(fleet.home))
    # the image's disk, kernel and ramdisk went through the bucket once, by digest
    s3 = boto3.client("s3", endpoint_url=fleet.s3, **_creds())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 3 and sorted(k.rsplit(".", 2)[1] for k in keys) == [
        "initrd", "raw", "vmlinuz"]  # fmt: skip
    assert "3 uploaded" in runs["stderr"]
    # each worker registered them under the client's IDs
    ids = {cells[0]["ImageId"], cells[0]["KernelId"], cells[0]["RamdiskId"]}
    for host, w in fleet.workers.items():
        listed = run_amilab("images", "--json", env={"AMILAB_HOME": str(w["home"])})
        got = {i["ImageId"] for i in json.loads(listed.stdout)["Images"]}
        assert ids <= got, (host, got)


def _qemu_of_worker(fleet: Fleet, timeout: float = 300) -> tuple[int, int, str]:
    """(QEMU pid, its parent: the worker process, host) of a guest whose console shows its
    kernel booting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for host, w in fleet.workers.items():
            for pid_file in (w["home"] / "instances").glob("i-*/qemu.pid"):
                try:
                    pid = int(pid_file.read_text())
                    console = w["home"] / "logs/instances" / f"{pid_file.parent.name}.console.log"
                    if "Linux version" in console.read_text(errors="replace"):
                        return pid, psutil.Process(pid).ppid(), host
                except (OSError, ValueError, psutil.NoSuchProcess):
                    pass
        time.sleep(0.1)
    raise AssertionError("no worker's guest reached its kernel")


def _start(fleet: Fleet, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*AMILAB, "matrix", *args], cwd=ROOT, env={**os.environ, **fleet.env()},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {p for p in pids if psutil.pid_exists(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {p for p in left if _alive(p)}
    return left


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_worker_killed_mid_boot_every_cell_once_and_its_qemu_gone(fleet: Fleet, runs: dict) -> None:
    report = fleet.root / "killed.json"
    cells = ["--image", "debian-pv", "--http-tokens", "optional", "--http-tokens", "required"]
    proc = _start(fleet, *fleet.remote(*cells, "--json-file", str(report)))
    qemu, worker, host = _qemu_of_worker(fleet)
    guests = {qemu} | {k.pid for k in psutil.Process(worker).children(recursive=True)
                       if k.name().startswith("qemu-system")}  # fmt: skip
    os.kill(worker, signal.SIGKILL)
    left = _wait_gone(guests, 5)
    assert not left, f"QEMU {left} outlived its worker {worker}"
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode in (0, 1), err[-3000:]
    assert "0 uploaded" in err  # the artifacts were there already
    doc = json.loads(report.read_text())
    assert sorted(c["Cell"] for c in doc["Cells"]) == [
        "debian-pv http_tokens=optional × own", "debian-pv http_tokens=required × own"]  # fmt: skip
    lost = [c for c in doc["Cells"] if c["Attempts"][0]["Class"] == "worker lost"]
    assert len(lost) == 1, [c["Attempts"] for c in doc["Cells"]]
    assert host in lost[0]["Attempts"][0]["Evidence"][0]["Text"]
    assert lost[0]["Status"] in ("PASS", "ERROR") and len(lost[0]["Attempts"]) >= 2
    # the nanny starts a new worker process: the next tests have two workers again
    deadline = time.monotonic() + 60
    while len(_workers(fleet)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)


def _workers(fleet: Fleet) -> list[str]:
    from distributed import Client

    with Client(fleet.scheduler, timeout=10) as c:
        return list(c.scheduler_info(n_workers=-1)["workers"])


def test_ctrl_c_stops_every_guest_within_10_s_and_writes_the_partial_report(
    fleet: Fleet, runs: dict
) -> None:
    report = fleet.root / "interrupted.json"
    proc = _start(fleet, *fleet.remote(*SIX, "--json-file", str(report)))
    _qemu_of_worker(fleet)
    seen = fleet.qemus()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    t0 = time.monotonic()
    # a guest that was starting when the cancel arrived is killed by the plugin's repeats
    left = _wait_gone(seen, 10)
    while (late := fleet.qemus()) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not left and not late, f"QEMU {left | late} left after {time.monotonic() - t0:.1f} s"
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    doc = json.loads(report.read_text())
    assert doc["Interrupted"] is True and len(doc["Cells"]) == 6
    assert any(c["NotRun"] for c in doc["Cells"])


def test_plain_tcp_to_a_non_loopback_scheduler_is_refused(fleet: Fleet) -> None:
    for address in ("tcp://192.0.2.10:8786", "192.0.2.10:8786"):
        result = run_amilab("matrix", "--image", "debian-pv", "--scheduler", address,
                            env=fleet.env())  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "plain TCP is accepted only on loopback" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unreachable_scheduler_is_exit_3(fleet: Fleet, runs: dict) -> None:
    port = _port("127.0.0.1")  # nothing listens there
    result = run_amilab("matrix", "--image", "debian-pv", "--scheduler",
                        f"tcp://127.0.0.1:{port}", env=fleet.env())  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "unreachable" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _certificates(where: Path) -> dict[str, Path]:
    """A CA, and a certificate signed by it for the scheduler, the worker and the client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("amilab test CA")).issuer_name(name(
        "amilab test CA")).public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))  # fmt: skip
    out = {"ca": where / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    sans = [x509.IPAddress(ipaddress.ip_address(f"127.0.0.{n}")) for n in range(1, 6)]
    cert = (x509.CertificateBuilder().subject_name(name("amilab fleet")).issuer_name(
        ca.subject).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))  # fmt: skip
    out["cert"], out["key"] = where / "cert.pem", where / "key.pem"
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))  # fmt: skip
    return out


def test_tls_scheduler_with_client_certificates(fleet: Fleet, runs: dict) -> None:
    certs = _certificates(fleet.root)
    tls = ["--tls-ca-file", str(certs["ca"]), "--tls-cert", str(certs["cert"]),
           "--tls-key", str(certs["key"])]  # fmt: skip
    port = _port("127.0.0.1")
    sched = fleet.start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                         str(port), "--protocol", "tls", "--no-dashboard", *tls],
                        dict(os.environ), "scheduler-tls.log")  # fmt: skip
    _wait_port("127.0.0.1", port, sched)
    address = f"tls://127.0.0.1:{port}"
    # a worker of its own (own home: it fetches the artifacts from the bucket too)
    fleet.start_worker("127.0.0.5", address, *tls, log="worker-tls.log")
    without = run_amilab("matrix", "--image", "debian-pv", "--scheduler", address,
                         env=fleet.env())  # fmt: skip
    assert without.returncode == 2 and "--tls-ca" in without.stderr, without.stderr
    report = fleet.root / "tls.json"
    args = ["--scheduler", address, "--tls-ca", str(certs["ca"]), "--tls-cert",
            str(certs["cert"]), "--tls-key", str(certs["key"]), "--artifacts",
            f"s3://{BUCKET}/cells", "--endpoint-url", fleet.s3, "--image", "debian-pv",
            "--json-file", str(report)]  # fmt: skip
    result, took = _matrix(fleet, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    cell = json.loads(report.read_text())["Cells"][0]
    assert cell["Status"] == "PASS" and cell["Worker"]["Address"].startswith("tls://127.0.0.5:")
