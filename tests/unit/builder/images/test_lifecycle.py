"""Lifecycle without a VM: small synthetic images registered in a temporary registry, then
copy-image, deregister, tags, launch permissions, filters, store/restore through a directory
and a real S3-compatible server (moto's, started here), and tampering with stored objects."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.ids import file_sha256, sparse_sha256
from builder.images import factory, lifecycle, store, targets
from builder.images.records import KernelSettings, LaunchSettings, RamdiskSettings
from builder.images.registry import ImageRecord, Registry, account_id
from tests.conftest import run_amilab


def write_sparse(path: Path, size: int, chunks: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in chunks:
            f.seek(off)
            f.write(data)
    return path


def register_fake(home: Path, name: str = "img", seed: int = 1) -> dict[str, ImageRecord]:
    """An AKI, an ARI and a paravirtual AMI whose 'disk' is a small sparse file."""
    files = home / "files"
    files.mkdir(parents=True, exist_ok=True)
    kernel = files / f"vmlinuz-{seed}"
    kernel.write_bytes(os.urandom(50_000))
    ramdisk = files / f"initrd-{seed}"
    ramdisk.write_bytes(os.urandom(20_000))
    disk = write_sparse(
        files / f"disk-{seed}.raw",
        48 << 20,
        [(0, os.urandom(8 << 20)), (20 << 20, b"\x11" * (2 << 20)), (40 << 20, os.urandom(4096))],
    )
    kd, rd = file_sha256(kernel), file_sha256(ramdisk)
    aki = factory.content_image(
        kd, f"kernel-{seed}", str(kernel), KernelSettings(cmdline="console=ttyS0"),
        release="6.1.0-test",
    )  # fmt: skip
    ari = factory.content_image(
        rd, f"initrd-{seed}", str(ramdisk), RamdiskSettings(built_for=aki.image_id)
    )
    dd = sparse_sha256(disk)
    registration = factory.Registration(
        name, "paravirtual", "/dev/sda1", kernel_id=aki.image_id, ramdisk_id=ari.image_id
    )
    ami = factory.machine_image(
        registration, dd, LaunchSettings(root_label="root", disk_size=48 << 20),
        {"raw": str(disk)}, description="a test image",
    )  # fmt: skip
    ami.tags = {"Team": "qa"}
    aki, ari, ami = Registry().register([aki, ari, ami])
    return {"aki": aki, "ari": ari, "ami": ami, "disk": disk}  # type: ignore[dict-item]


@pytest.fixture(autouse=True)
def own_ec2_keys(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """amilab's EC2 key pair for these tests only, not the user's."""
    monkeypatch.setenv("AMILAB_EC2_KEYS", str(tmp_path_factory.getbasetemp() / "ec2-keys"))


@pytest.fixture
def fake(amilab_home: Path) -> dict:
    return register_fake(amilab_home)


# ------------------------------------------------------------- copy, tags, permissions


def test_copy_image_is_a_new_id_without_tags_or_permissions_unless_asked(fake) -> None:
    src = fake["ami"]
    lifecycle.set_launch_permission(src.image_id, add=["111122223333"], public=True)
    plain = lifecycle.copy_image(src.image_id, "copy-1")
    tagged = lifecycle.copy_image(src.image_id, "copy-2", copy_tags=True)
    assert len({src.image_id, plain.image_id, tagged.image_id}) == 3
    assert plain.tags == {} and tagged.tags == {"Team": "qa"}
    for c in (plain, tagged):
        assert (c.public, c.launch_permissions) == (False, [])
        assert (c.kernel_id, c.ramdisk_id) == (src.kernel_id, src.ramdisk_id)
        assert c.digest == src.digest
        assert c.owner_id == account_id()
    # the source is untouched, and a copy under a name in use is refused
    assert Registry().get(src.image_id).public is True
    with pytest.raises(BadInput, match="already in use"):
        lifecycle.copy_image(src.image_id, "copy-1")


def test_a_failed_image_keeps_no_name(fake) -> None:
    """A pending image holds its name; once failed (its process died: pending recovery),
    the name is free again, so the killed command can be run again under it."""
    from builder.state import pending

    src = fake["ami"]
    copy = lifecycle.copy_image(src.image_id, "again")

    def as_pending(r) -> None:
        r.state, r.extra["owner"] = "pending", {"Pid": 1, "Start": 1}  # not init's start

    Registry().update(copy.image_id, as_pending)
    with pytest.raises(BadInput, match="already in use"):
        lifecycle.copy_image(src.image_id, "again")
    assert [s.key for s in pending.recover()] == [copy.image_id]
    assert Registry().get(copy.image_id).state == "failed"
    assert lifecycle.copy_image(src.image_id, "again").image_id != copy.image_id


def test_tags_are_added_changed_and_removed(fake) -> None:
    ami = fake["ami"].image_id
    lifecycle.tag([ami], lifecycle.parse_tags(["Env=prod", "Team=core", "Empty"]))
    assert Registry().get(ami).tags == {"Env": "prod", "Team": "core", "Empty": ""}
    lifecycle.untag([ami], ["Env=staging", "Team", "Empty="])
    assert Registry().get(ami).tags == {"Env": "prod"}
    with pytest.raises(BadInput, match="reserved"):
        lifecycle.parse_tags(["aws:x=1"])


def test_launch_permissions_and_describe_fields(fake) -> None:
    ami = fake["ami"].image_id
    rec = lifecycle.set_launch_permission(ami, add=["111122223333", "444455556666"])
    rec = lifecycle.set_launch_permission(ami, remove=["111122223333"], public=True)
    d = rec.describe()
    assert d["Public"] is True and d["OwnerId"] == account_id()
    assert d["LaunchPermissions"] == [{"UserId": "444455556666"}, {"Group": "all"}]
    rec = lifecycle.set_launch_permission(ami, reset=True)
    assert rec.describe()["LaunchPermissions"] == [] and rec.public is False
    with pytest.raises(BadInput, match="12-digit"):
        lifecycle.set_launch_permission(ami, add=["12"])


def test_filters_by_owner_name_tag_and_executable_by(fake, monkeypatch) -> None:
    other = lifecycle.copy_image(fake["ami"].image_id, "web-server")
    lifecycle.tag([other.image_id], {"Env": "prod"})
    monkeypatch.setenv("AMILAB_ACCOUNT_ID", "999988887777")
    foreign = lifecycle.copy_image(fake["ami"].image_id, "web-foreign")
    monkeypatch.delenv("AMILAB_ACCOUNT_ID")
    lifecycle.set_launch_permission(foreign.image_id, add=[account_id()])

    def ids(**kw) -> set[str]:
        return {
            r.image_id for r in lifecycle.describe_images("machine", lifecycle.ImageFilter(**kw))
        }

    assert ids(names=["web-*"]) == {other.image_id, foreign.image_id}
    assert ids(owners=["self"]) == {fake["ami"].image_id, other.image_id}
    assert ids(owners=["999988887777"]) == {foreign.image_id}
    assert ids(tags=["Env=pr*"]) == {other.image_id}
    assert ids(tags=["Team"]) == {fake["ami"].image_id}
    assert foreign.image_id in ids(executable_by=["self"])
    assert ids(executable_by=["all"]) == set()
    out = run_amilab("images", "--json", "--name", "web-*", "--owner", "999988887777")
    assert [i["ImageId"] for i in json.loads(out.stdout)["Images"]] == [foreign.image_id]


def test_deregister_refuses_a_kernel_in_use_unless_forced(fake) -> None:
    aki, ami = fake["aki"].image_id, fake["ami"].image_id
    with pytest.raises(BadInput, match=f"used by {ami}"):
        lifecycle.deregister(aki)
    assert Registry().get(aki) is not None
    out = run_amilab("deregister", aki)
    assert out.returncode == 2 and ami in out.stderr
    lifecycle.deregister(ami)
    assert Registry().get(ami) is None
    lifecycle.deregister(aki)  # no AMI uses it any more
    assert Registry().get(aki) is None


def test_deregister_force(fake) -> None:
    out = run_amilab("deregister", fake["ari"].image_id, "--force", "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"Deregistered": [{"ImageId": fake["ari"].image_id}]}


# --------------------------------------------------------------------- store/restore


def restored_disk(rec: ImageRecord) -> bytes:
    return Path(rec.locations["raw"]).read_bytes()


def test_store_and_restore_through_a_directory(fake, tmp_path: Path) -> None:
    task = store.store_image(fake["ami"].image_id, str(tmp_path / "bucket"))
    assert task.state == "Completed" and task.progress == 100
    assert task.object_key == f"{fake['ami'].image_id}.bin"
    obj = tmp_path / "bucket" / task.object_key
    meta = json.loads((obj.parent / (obj.name + ".metadata.json")).read_text())
    assert meta["ami-name"] == "img" and meta["ami-owner-account"] == account_id()
    assert {"ami-description", "ami-creation-date", "ami-store-date"} <= set(meta)
    r = store.restore_image(str(tmp_path / "bucket"), task.object_key, name="img-restored")
    new = r.image
    assert new.image_id != fake["ami"].image_id and new.name == "img-restored"
    assert restored_disk(new) == fake["disk"].read_bytes()
    assert new.tags == {"Team": "qa"} and new.description == "a test image"
    assert (new.kernel_id, new.ramdisk_id) == (fake["ami"].kernel_id, fake["ami"].ramdisk_id)
    assert new.launch.root_label == "root"
    # the name is now taken: a second restore under it is refused, nothing registered
    before = len(Registry().list())
    with pytest.raises(BadInput, match="already in use"):
        store.restore_image(str(tmp_path / "bucket"), task.object_key, name="img-restored")
    assert len(Registry().list()) == before


def test_restore_brings_its_kernel_and_ramdisk_when_stored_with_them(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home1"))
    fake = register_fake(tmp_path / "home1")
    task = store.store_image(fake["ami"].image_id, str(tmp_path / "b"), with_kernel=True)
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home2"))  # another machine's registry
    r = store.restore_image(str(tmp_path / "b"), task.object_key)
    assert r.kernel.image_id == fake["aki"].image_id and r.ramdisk.image_id == fake["ari"].image_id
    assert (
        Path(r.kernel.image_location).read_bytes() == Path(fake["aki"].image_location).read_bytes()
    )
    assert r.image.name == "img" and r.image.image_id != fake["ami"].image_id


def test_restore_without_its_kernel_anywhere_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home1"))
    fake = register_fake(tmp_path / "home1")
    task = store.store_image(fake["ami"].image_id, str(tmp_path / "b"))
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home2"))
    with pytest.raises(BadInput, match="--with-kernel"):
        store.restore_image(str(tmp_path / "b"), task.object_key)
    assert Registry().list() == []


@pytest.mark.parametrize("where", ["header", "start", "middle", "trailer"])
def test_a_flipped_byte_in_the_object_is_refused(fake, tmp_path: Path, where: str) -> None:
    task = store.store_image(fake["ami"].image_id, str(tmp_path / "bucket"))
    obj = tmp_path / "bucket" / task.object_key
    data = bytearray(obj.read_bytes())
    at = {"header": 8, "start": 200, "middle": len(data) // 2, "trailer": len(data) - 3}[where]
    data[at] ^= 0x20
    obj.write_bytes(data)
    before = [r.image_id for r in Registry().list()]
    out = run_amilab(
        "restore", "--bucket", str(tmp_path / "bucket"), "--object-key", task.object_key,
        "--name", "x",
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("amilab: ") and len(out.stderr.strip().splitlines()) == 1
    assert [r.image_id for r in Registry().list()] == before


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.999])
def test_a_truncated_object_is_refused(fake, tmp_path: Path, keep: float) -> None:
    task = store.store_image(fake["ami"].image_id, str(tmp_path / "bucket"))
    obj = tmp_path / "bucket" / task.object_key
    data = obj.read_bytes()
    obj.write_bytes(data[: int(len(data) * keep)])
    before = len(Registry().list())
    with pytest.raises(BadInput, match="truncated|ends early|not an amilab"):
        store.restore_image(str(tmp_path / "bucket"), task.object_key, name="x")
    assert len(Registry().list()) == before
    assert not list((Registry().home / "work").glob("restore-*"))


def test_store_tasks_show_failed_and_completed(fake, tmp_path: Path) -> None:
    store.store_image(fake["ami"].image_id, str(tmp_path / "ok"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        store.store_image(fake["ami"].image_id, str(blocker / "sub"))
    out = run_amilab("store-tasks", "--json", check=True)
    tasks = json.loads(out.stdout)["StoreImageTaskResults"]
    assert [t["StoreTaskState"] for t in tasks] == ["Completed", "Failed"]
    assert tasks[0]["ProgressPercentage"] == 100 and tasks[1]["StoreTaskFailureReason"]
    assert all(t["AmiId"] == fake["ami"].image_id for t in tasks)


# ------------------------------------------------------------------------------- S3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """moto's standalone server: a real S3-compatible HTTP endpoint in its own process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    proc, url = start_s3_server()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server: str, monkeypatch) -> Iterator[tuple[str, object]]:
    import boto3

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AMILAB_S3_ENDPOINT_URL", s3_server)
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"b{os.getpid()}{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    yield bucket, client


def test_store_and_restore_through_s3_with_multipart(fake, s3, monkeypatch) -> None:
    bucket, client = s3
    monkeypatch.setattr(targets, "S3_PART_SIZE", 5 << 20)  # several parts for a small object
    task = store.store_image(fake["ami"].image_id, f"s3://{bucket}/amis")
    assert task.object_key == f"amis/{fake['ami'].image_id}.bin"
    head = client.head_object(Bucket=bucket, Key=task.object_key)
    assert head["ContentLength"] == task.bytes_stored > 5 << 20
    assert "-" in head["ETag"]  # a multipart upload's ETag
    assert head["Metadata"]["ami-name"] == "img"
    assert head["Metadata"]["ami-owner-account"] == account_id()
    r = store.restore_image(f"s3://{bucket}/amis", task.object_key, name="from-s3")
    assert restored_disk(r.image) == fake["disk"].read_bytes()
    assert r.image.image_id != fake["ami"].image_id


def _flipped(data: bytes, at: int) -> bytes:
    """`data` with one bit flipped at `at` or, if that leaves the inflated content as it was
    (a flip in padding bits or an unused Huffman code length changes nothing gzip checks,
    which a few percent of runs hit at a fixed offset), at the next offset where it does not."""
    plain = gzip.decompress(data)
    for off in range(at % len(data), len(data)):
        bad = data[:off] + bytes([data[off] ^ 1]) + data[off + 1 :]
        try:
            if gzip.decompress(bad) != plain:
                return bad
        except (OSError, EOFError, zlib.error):
            return bad
    raise AssertionError("no flip changes the object")


def test_a_corrupted_or_truncated_s3_object_is_refused(fake, s3) -> None:
    bucket, client = s3
    task = store.store_image(fake["ami"].image_id, f"s3://{bucket}")
    data = client.get_object(Bucket=bucket, Key=task.object_key)["Body"].read()
    for i, bad in enumerate((data[: len(data) // 2], _flipped(data, 100), _flipped(data, -6))):
        key = f"corrupt-{i}/{task.object_key}"
        client.put_object(Bucket=bucket, Key=key, Body=bad)
        before = len(Registry().list())
        with pytest.raises(BadInput):
            store.restore_image(f"s3://{bucket}", key, name="x")
        assert len(Registry().list()) == before


def test_two_concurrent_stores_both_complete(amilab_home: Path, s3) -> None:
    bucket, client = s3
    a = register_fake(amilab_home, "a", seed=1)["ami"]
    b = register_fake(amilab_home, "b", seed=2)["ami"]
    results: dict[str, object] = {}

    def run(ami: str) -> None:
        results[ami] = run_amilab("store", ami, "--bucket", f"s3://{bucket}", "--json")

    threads = [threading.Thread(target=run, args=(x.image_id,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ami in (a.image_id, b.image_id):
        out = results[ami]
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["StoreTaskState"] == "Completed"
        client.head_object(Bucket=bucket, Key=f"{ami}.bin")
    states = json.loads(run_amilab("store-tasks", "--json", check=True).stdout)
    assert sorted(t["AmiId"] for t in states["StoreImageTaskResults"]) == sorted(
        [a.image_id, b.image_id]
    )


# ------------------------------------------------------------ bundles of AKIs and ARIs


def test_kernel_and_ramdisk_bundles_register_elsewhere_under_the_same_ids(
    tmp_path: Path, monkeypatch
) -> None:
    from builder.images.bundle_keys import make_key_pair

    make_key_pair(tmp_path / "cert.pem", tmp_path / "pk.pem", "user")
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home1"))
    fake = register_fake(tmp_path / "home1")
    made = {
        kind: lifecycle.bundle_image(
            fake[kind].image_id, tmp_path / "cert.pem", tmp_path / "pk.pem", tmp_path / kind
        )
        for kind in ("aki", "ari", "ami")
    }
    assert made["aki"].manifest.image_type == "kernel"
    assert made["aki"].manifest.kernel_name == "6.1.0-test"
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home2"))  # another registry
    certs = [tmp_path / "cert.pem"]
    # the AMI first: its kernel is not registered here yet
    with pytest.raises(BadInput, match="not registered"):
        lifecycle.register_manifest(made["ami"].manifest_path, certs=certs)
    for kind in ("aki", "ari"):
        rec = lifecycle.register_manifest(made[kind].manifest_path, certs=certs)
        assert rec.image_id == fake[kind].image_id  # AKI/ARI IDs derive from the bytes
        assert Path(rec.locations["raw"]).read_bytes() == (
            Path(fake[kind].image_location).read_bytes()
        )
    ami = lifecycle.register_manifest(made["ami"].manifest_path, certs=certs)
    assert ami.image_id != fake["ami"].image_id
    assert (ami.kernel_id, ami.ramdisk_id) == (fake["aki"].image_id, fake["ari"].image_id)
    assert Path(ami.locations["raw"]).read_bytes() == fake["disk"].read_bytes()
    assert ami.image_location == str(made["ami"].manifest_path)
    # without the signer's certificate it is not trusted
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "home3"))
    with pytest.raises(BadInput, match="no signing certificate"):
        lifecycle.register_manifest(made["aki"].manifest_path)
