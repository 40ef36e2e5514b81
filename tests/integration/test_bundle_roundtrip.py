"""The default image through bundle → unbundle → register, by the real CLI: byte-identical
disk, same kernel and ramdisk, a manifest that names it, and a registered image that boots
(`amilab smoke`). Tampering with a part or the manifest, or a wrong key, is exit code 2 with
nothing registered."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest

from builder.images.bundle_keys import make_key_pair
from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build, images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    out = build(ROOT / "build.yaml", home, "--image", "debian-pv")
    keys = tmp_path_factory.mktemp("keys")
    make_key_pair(keys / "cert.pem", keys / "pk.pem", "user")
    make_key_pair(keys / "other-cert.pem", keys / "other-pk.pem", "other")
    ami = out["Images"][0]
    env = {"AMILAB_HOME": str(home), "AMILAB_EC2_KEYS": str(keys / "ec2")}
    return {"home": home, "ami": ami, "keys": keys, "env": env}


def cli(built: dict, *args: str, check: bool = True):
    return run_amilab(*args, env=built["env"], check=check)


def bundle(built: dict, dest: Path, prefix: str = "debian-pv") -> dict:
    k = built["keys"]
    out = cli(
        built, "bundle", built["ami"]["ImageId"], "--cert", str(k / "cert.pem"),
        "--privatekey", str(k / "pk.pem"), "-d", str(dest), "--prefix", prefix, "--json",
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def bundled(built: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    dest = tmp_path_factory.mktemp("bundle")
    return {**bundle(built, dest), "dir": dest}


def test_unbundle_gives_the_exact_disk(built: dict, bundled: dict, tmp_path: Path) -> None:
    assert bundled["ImageId"] == built["ami"]["ImageId"]
    assert len(bundled["Parts"]) >= 2 and bundled["Size"] == 2 << 30
    out = cli(
        built, "unbundle", bundled["ManifestPath"], "--privatekey",
        str(built["keys"] / "pk.pem"), "-d", str(tmp_path), "--json",
    )  # fmt: skip
    restored = Path(json.loads(out.stdout)["ImagePath"])
    assert filecmp.cmp(restored, built["ami"]["ImageLocation"], shallow=False)


@pytest.fixture(scope="module")
def registered(built: dict, bundled: dict) -> dict:
    out = cli(built, "register", bundled["ManifestPath"], "--name", "debian-pv-bundled", "--json")
    return json.loads(out.stdout)["Images"][0]


def test_register_keeps_kernel_ramdisk_and_the_disk_bytes(
    built: dict, bundled: dict, registered: dict
) -> None:
    src = built["ami"]
    assert registered["ImageId"] != src["ImageId"]
    assert registered["ImageId"].startswith("ami-") and len(registered["ImageId"]) == 21
    assert (registered["KernelId"], registered["RamdiskId"]) == (src["KernelId"], src["RamdiskId"])
    assert registered["ImageLocation"] == bundled["ManifestPath"]
    assert registered["VirtualizationType"] == "paravirtual"
    assert filecmp.cmp(registered["Locations"]["raw"], src["ImageLocation"], shallow=False)
    listed = {i["ImageId"]: i for i in images(built["home"], "machine")}
    assert registered["ImageId"] in listed and src["ImageId"] in listed


def test_registering_again_under_a_taken_name_is_refused(built: dict, bundled: dict, registered):
    out = cli(built, "register", bundled["ManifestPath"], "--name", registered["Name"], check=False)
    assert out.returncode == 2 and "already in use" in out.stderr


def smoke(built: dict, ami: str) -> tuple[int, dict, str]:
    out = cli(built, "smoke", ami, "--json", check=False)
    try:
        report = json.loads(out.stdout)
    except ValueError:
        report = {}
    report = report[0] if isinstance(report, list) and report else report
    return out.returncode, report, out.stdout[-2000:] + out.stderr[-2000:]


def test_the_registered_bundle_passes_smoke(built: dict, registered: dict) -> None:
    code, report, tail = smoke(built, registered["ImageId"])
    if code != 0:
        # a failure all the same; the original's smoke only says where to look first
        original, _, _ = smoke(built, built["ami"]["ImageId"])
        tail = f"(the original image's smoke exits {original})\n{tail}"
    assert code == 0, tail
    assert report["Passed"] is True and report["ImageId"] == registered["ImageId"]
    assert report["KernelId"] == registered["KernelId"]
    assert report["RamdiskId"] == registered["RamdiskId"]


def copy_bundle(bundled: dict, dest: Path) -> Path:
    shutil.copytree(bundled["dir"], dest)
    return dest / Path(bundled["ManifestPath"]).name


def machine_ids(built: dict) -> set[str]:
    return {i["ImageId"] for i in images(built["home"], "machine")}


def assert_refused(built: dict, args: list[str], reason: str) -> None:
    before = machine_ids(built)
    out = cli(built, *args, check=False)
    assert out.returncode == 2, out.stderr
    assert reason in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert machine_ids(built) == before


def test_a_flipped_byte_in_a_part_is_exit_2(built: dict, bundled: dict, tmp_path: Path) -> None:
    manifest = copy_bundle(bundled, tmp_path / "b")
    part = tmp_path / "b" / bundled["Parts"][1]
    with open(part, "r+b") as f:
        f.seek(4321)
        byte = f.read(1)
        f.seek(4321)
        f.write(bytes([byte[0] ^ 0x80]))
    assert_refused(built, ["register", str(manifest), "--name", "t1"], "SHA1 does not match")
    assert_refused(
        built,
        ["unbundle", str(manifest), "-k", str(built["keys"] / "pk.pem"), "-d", str(tmp_path / "u")],
        "SHA1 does not match",
    )
    assert not list((tmp_path / "u").iterdir())


def test_a_tampered_manifest_is_exit_2(built: dict, bundled: dict, tmp_path: Path) -> None:
    manifest = copy_bundle(bundled, tmp_path / "b")
    text = manifest.read_text()
    manifest.write_text(text.replace(built["ami"]["RamdiskId"], "ari-00000000000000000"))
    assert_refused(built, ["register", str(manifest), "--name", "t2"], "signature does not verify")


def test_a_wrong_key_is_exit_2(built: dict, bundled: dict, tmp_path: Path) -> None:
    k = built["keys"]
    args = ["unbundle", bundled["ManifestPath"], "-k", str(k / "other-pk.pem"), "-d", str(tmp_path)]
    assert_refused(built, args, "signature does not verify")
    assert_refused(built, [*args, "--cert", str(k / "cert.pem")], "wrong key")


def test_a_truncated_upload_is_exit_2(built: dict, bundled: dict, tmp_path: Path) -> None:
    manifest = copy_bundle(bundled, tmp_path / "b")
    last = tmp_path / "b" / bundled["Parts"][-1]
    last.write_bytes(last.read_bytes()[:-4096])
    assert_refused(built, ["register", str(manifest), "--name", "t3"], "truncated")
