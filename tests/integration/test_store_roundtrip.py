"""The default image through store → restore by the real CLI, via a directory and via an
S3-compatible server (moto's, started here): a new AMI ID with identical disk bytes and
metadata; two concurrent stores both complete; a damaged object is exit code 2."""

from __future__ import annotations

import filecmp
import json
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build
from tests.unit.builder.images.test_lifecycle import S3_ENV, s3_server  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

# what a restore changes; everything else in describe-images must be the same
CHANGES = {"ImageId", "Name", "CreationDate", "ImageLocation", "Locations", "OwnerId"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, s3_server: str) -> dict:  # noqa: F811
    home = tmp_path_factory.mktemp("home")
    out = build(ROOT / "build.yaml", home, "--image", "debian-pv")
    env = {"AMILAB_HOME": str(home), "AMILAB_S3_ENDPOINT_URL": s3_server, **S3_ENV}
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).create_bucket(Bucket="amis")  # fmt: skip
    ami = out["Images"][0]
    run_amilab("tag", ami["ImageId"], "Stage=test", "Owner=qa", env=env, check=True)
    ami = json.loads(
        run_amilab("images", "--image-id", ami["ImageId"], "--json", env=env, check=True).stdout
    )["Images"][0]
    return {"home": home, "ami": ami, "env": env}


def cli(built: dict, *args: str, check: bool = True):
    return run_amilab(*args, env=built["env"], check=check)


@pytest.mark.parametrize("kind", ["directory", "s3"])
def test_store_then_restore_gives_a_new_id_with_the_same_disk_and_metadata(
    built: dict, tmp_path: Path, kind: str
) -> None:
    src = built["ami"]
    bucket = str(tmp_path / "bucket") if kind == "directory" else "s3://amis/stored"
    stored = json.loads(cli(built, "store", src["ImageId"], "--bucket", bucket, "--json").stdout)
    assert stored["StoreTaskState"] == "Completed" and stored["ProgressPercentage"] == 100
    assert stored["ObjectKey"].endswith(f"{src['ImageId']}.bin")
    out = cli(
        built, "restore", "--bucket", bucket, "--object-key", stored["ObjectKey"],
        "--name", f"restored-{kind}", "--json",
    )  # fmt: skip
    restored = json.loads(out.stdout)["Images"][0]
    assert restored["ImageId"] != src["ImageId"] and restored["Name"] == f"restored-{kind}"
    assert filecmp.cmp(restored["Locations"]["raw"], src["ImageLocation"], shallow=False)
    same = {k: v for k, v in src.items() if k not in CHANGES}
    assert {k: v for k, v in restored.items() if k not in CHANGES} == same
    assert {t["Key"] for t in restored["Tags"]} == {"Stage", "Owner"}


def test_restore_refuses_a_name_in_use(built: dict, tmp_path: Path) -> None:
    src = built["ami"]
    cli(built, "store", src["ImageId"], "--bucket", str(tmp_path))
    out = cli(
        built, "restore", "--bucket", str(tmp_path), "--object-key", f"{src['ImageId']}.bin",
        check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "already in use" in out.stderr


def test_two_concurrent_stores_both_complete(built: dict) -> None:
    src = built["ami"]
    copy = json.loads(cli(built, "copy-image", src["ImageId"], "--name", "cc", "--json").stdout)
    results = {}

    def store(ami: str) -> None:
        results[ami] = run_amilab(
            "store", ami, "--bucket", "s3://amis/concurrent", "--json", env=built["env"]
        )

    threads = [threading.Thread(target=store, args=(a,)) for a in (src["ImageId"], copy["ImageId"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ami, out in results.items():
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["StoreTaskState"] == "Completed", ami
    tasks = json.loads(cli(built, "store-tasks", "--json").stdout)["StoreImageTaskResults"]
    done = {t["AmiId"] for t in tasks if t["Bucket"] == "s3://amis/concurrent"}
    assert done == {src["ImageId"], copy["ImageId"]}


def test_a_flipped_byte_or_truncation_in_the_bin_is_exit_2(built: dict, tmp_path: Path) -> None:
    src = built["ami"]
    cli(built, "store", src["ImageId"], "--bucket", str(tmp_path))
    obj = tmp_path / f"{src['ImageId']}.bin"
    good = obj.read_bytes()
    for bad in (
        good[:1000] + bytes([good[1000] ^ 1]) + good[1001:],
        good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 0x40]) + good[len(good) // 2 + 1 :],
        good[: len(good) - 100],
    ):
        obj.write_bytes(bad)
        out = cli(
            built, "restore", "--bucket", str(tmp_path), "--object-key", obj.name,
            "--name", "never", check=False,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        names = [i["Name"] for i in json.loads(cli(built, "images", "--json").stdout)["Images"]]
        assert "never" not in names
