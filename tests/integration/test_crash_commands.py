"""Crash consistency (issue #29), the commands test_crash.py does not cover: bundle, register,
upload-bundle (to moto's S3 server), register-kernel, add-modules, run-instances,
terminate-instances, create-image and bundle-vol, each killed with SIGKILL at its time points
and checked as test_crash.py checks (`run_case`, `_check_after_kill`): fsck reports only what
--repair fixes, clean after it, the re-run succeeds (or gives EC2's refusal), everything
that existed before keeps its digest and describe output.

Cheapest inputs: the AMIs are a few MiB of raw disk (one an ext4 filesystem over the whole
disk, which bundle-vol and add-modules read), the kernel is the host's /boot kernel with its
/lib/modules tree. Instances boot nothing useful (the firmware finds no bootloader), but they
are real supervised QEMU instances with real EBS volumes: create-image and bundle-vol share
one (with --no-reboot), run-instances' re-runs are terminated after each point.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.images.bundle_keys import make_key_pair
from builder.images.tables import JsonTable
from tests.integration import instances_helpers as live
from tests.integration.test_crash import (  # noqa: F401 - home is a fixture
    POINTS,
    Case,
    Home,
    _run,
    home,
    register_disk,
    run_case,
)
from tests.unit.builder.images.test_lifecycle import S3_ENV, s3_server  # noqa: F401 - fixture


def _host_kernel() -> tuple[Path, Path] | None:
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*")):
        release = vmlinuz.split("vmlinuz-", 1)[1]
        if Path(f"/lib/modules/{release}/modules.dep").is_file():
            return Path(vmlinuz), Path(f"/lib/modules/{release}")
    return None


@dataclass
class Kit:
    home: Home
    fs_ami: str  # an ext4 filesystem over the whole disk
    cert: Path
    key: Path
    manifest: Path  # crash-base bundled
    instance: str  # a running instance of fs_ami, shared by create-image and bundle-vol
    aki: str
    vmlinuz: Path
    modules: Path
    s3_url: str
    bucket: str

    def out(self, stem: str) -> str:
        return str(self.home.path.parent / self.home.fresh(stem))


def _cli_json(h: Home, *args: str) -> dict:
    res = _run(h.path, [*args, "--json"])
    assert res.returncode == 0, f"{args[0]}: {res.stderr}"
    return json.loads(res.stdout)


def _launch(h: Home, ami: str) -> str:
    return str(_cli_json(h, "run-instances", ami)["Instances"][0]["InstanceId"])


def _volumes_of(iid: str) -> set[str]:
    """The volumes the instance's record maps (its record stays once it is terminated)."""
    rec = JsonTable("instances", "instance").get(iid) or {}
    return {m["Ebs"]["VolumeId"] for m in rec.get("BlockDeviceMappings") or [] if "Ebs" in m}


def terminate_all(h: Home, keep: str = "") -> None:
    """Ends every instance the points launched (killed launches included: terminating
    one whose launcher died finds it so and releases its volumes), except `keep`."""
    rows = _cli_json(h, "describe-instances")
    ids = [i["InstanceId"] for r in rows.get("Reservations", []) for i in r["Instances"]
           if i["InstanceId"] != keep and i["State"]["Name"] != "terminated"]  # fmt: skip
    if ids:
        res = _run(h.path, ["terminate-instances", *ids, "--wait"])
        assert res.returncode == 0, res.stderr


def _terminate_all_but(k: Kit) -> None:
    terminate_all(k.home, k.instance)


@pytest.fixture(scope="module")
def kit(home: Home, s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:  # noqa: F811
    host = _host_kernel()
    if host is None:
        pytest.skip("no /boot kernel with its /lib/modules tree on this host")
    keys = tmp_path_factory.mktemp("crash-keys")
    cert, key = keys / "cert.pem", keys / "pk.pem"
    make_key_pair(cert, key, "user")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMILAB_HOME", str(home.path))
        for k, v in S3_ENV.items():
            mp.setenv(k, v)
        # a disk with room for the host kernel's modules (sparse: little of it is written)
        fs_ami = register_disk("crash-fs", 1 << 30, mkfs=True).image_id
        import boto3

        bucket = "crash-bundles"
        boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
        bundled = _cli_json(home, "bundle", home.ami, "-c", str(cert), "-k", str(key),
                            "-d", str(keys / "bundle"), "--prefix", "cb")  # fmt: skip
        aki = _cli_json(home, "register-kernel", "--vmlinuz", str(host[0]),
                        "--modules", str(host[1]))["Images"][0]["ImageId"]  # fmt: skip
        kit = Kit(home, fs_ami, cert, key, Path(bundled["ManifestPath"]), "", aki, *host,
                  s3_server, bucket)  # fmt: skip
        kit.instance = _launch(home, fs_ami)
        live.wait_state({"env": {"AMILAB_HOME": str(home.path)}}, kit.instance, "running")
        try:
            yield kit
        finally:
            _run(home.path, ["terminate-instances", kit.instance, "--wait"])
            _terminate_all_but(kit)


def _cases(k: Kit) -> dict[str, Case]:
    keys = ["-c", str(k.cert), "-k", str(k.key)]
    cases = [
        Case("bundle", lambda h: (["bundle", h.ami, *keys, "-d", k.out("bundle"),
                                   "--prefix", "cb"], None)),
        Case("register", lambda h: (["register", str(k.manifest), "--cert", str(k.cert),
                                     "--name", h.fresh("registered")], None), "already in use"),
        Case("upload-bundle", lambda h: (["upload-bundle", "-m", str(k.manifest), "--bucket",
                                          f"s3://{k.bucket}/{h.fresh('up')}",
                                          "--endpoint-url", k.s3_url], None)),
        # the same kernel's bytes give the same AKI: a re-run finds it registered
        Case("register-kernel", lambda h: (["register-kernel", "--vmlinuz", str(k.vmlinuz),
                                            "--modules", str(k.modules),
                                            "--name", h.fresh("kernel")], None)),
        Case("add-modules", lambda h: (["add-modules", k.fs_ami, "--kernel", k.aki,
                                        "--name", h.fresh("with-modules")], None),
             "already in use"),
        Case("run-instances", lambda h: (["run-instances", h.ami], None)),
        Case("terminate-instances",
             lambda h: (["terminate-instances", i := _launch(h, h.ami)], i),
             moving=_volumes_of),
        Case("create-image", lambda h: (["create-image", k.instance, "--no-reboot",
                                         "--name", h.fresh("created")], None), "already in use"),
        Case("bundle-vol", lambda h: (["bundle-vol", k.instance, *keys, "-d", k.out("vol"),
                                       "--no-reboot"], None)),
    ]  # fmt: skip
    return {c.name: c for c in cases}


NAMES = ["bundle", "register", "upload-bundle", "register-kernel", "add-modules",
         "run-instances", "terminate-instances", "create-image", "bundle-vol"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_killed_command_leaves_consistent_state(
    kit: Kit, name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMILAB_HOME", str(kit.home.path))
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    case = _cases(kit)[name]
    launches = name in ("run-instances", "terminate-instances")
    run_case(kit.home, case, capsys, (lambda: _terminate_all_but(kit)) if launches else None)
    assert len(kit.home.tried[name]) == POINTS
