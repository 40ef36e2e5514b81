"""bundle-vol without a VM: a real ext4 volume (mkfs.ext4 -d) as a qcow2, bundled with the
default filter and an --exclude, uploaded to a directory and to a real S3-compatible server
(moto's), registered from both; what was left out is gone from the image and from its free
space, what was kept is there, and the volume never changed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.disk import qemu_img
from builder.errors import BadInput
from builder.ids import file_sha256
from builder.images import bundle, bundle_keys, bundle_upload, lifecycle
from builder.images.bundle_keys import make_key_pair
from builder.images.bundle_volume import Selection, bundle_volume
from builder.images.image_files import image_file
from tests.conftest import need
from tests.unit.builder.images.test_lifecycle import (  # noqa: F401 - fixtures
    own_ec2_keys,
    s3,
    s3_server,
)

SECRET = b"-----BEGIN RSA PRIVATE KEY-----amilab-secret-key-material"


def _volume(tmp: Path) -> Path:
    tree = tmp / "tree"
    for d in ("root/.ssh", "mnt/keys", "dev", "proc", "etc", "srv/skip", "home/u"):
        (tree / d).mkdir(parents=True)
    (tree / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA host\n")
    (tree / "mnt/keys/pk-user.pem").write_bytes(SECRET)
    (tree / "home/u/id_rsa").write_bytes(SECRET + b"2")
    (tree / "srv/skip/data").write_text("left out by --exclude\n")
    (tree / "etc/changed").write_text("the instance's change\n")
    (tree / "etc/server.pem.keep").write_text("not a .pem name\n")
    raw = tmp / "vol.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(raw), "32M"],
                   check=True)  # fmt: skip
    vol = tmp / "vol.qcow2"
    qemu_img.convert(raw, vol, src_format="raw", out_format="qcow2")
    return vol


def _ls(raw: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"ls -p {path}", str(raw)], capture_output=True,
                          text=True).stdout  # fmt: skip


def test_bundle_vol_upload_register(amilab_home: Path, tmp_path: Path, s3) -> None:  # noqa: F811
    need("mkfs.ext4", "e2fsprogs")
    need("qemu-img", "qemu-utils")
    vol = _volume(tmp_path)
    before = file_sha256(vol)
    make_key_pair(tmp_path / "cert.pem", tmp_path / "pk.pem", "user")
    ec2_cert = bundle_keys.ec2_key_pair()[0]
    result, removed = bundle_volume(
        vol, "qcow2", 0, tmp_path / "out", "vol", Selection(["/srv/skip"]),
        user="123456789012", architecture="x86_64", user_cert=tmp_path / "cert.pem",
        private_key=tmp_path / "pk.pem", ec2_cert=ec2_cert, kernel_id=None, ramdisk_id=None,
        root_device="/dev/sda1",
    )  # fmt: skip
    assert file_sha256(vol) == before  # only read
    assert set(removed) == {"/srv/skip", "/mnt/keys", "/root/.ssh/authorized_keys",
                            "/home/u/id_rsa"}  # fmt: skip
    bundle_keys.remember_signing_cert("123456789012", tmp_path / "cert.pem")

    up = bundle_upload.upload_bundle(result.manifest_path, str(tmp_path / "bucket"))
    assert up.objects[-1] == "vol.manifest.xml"
    rec = lifecycle.register_manifest(Path(up.location), name="from-dir")
    assert rec.root_device_type == "instance-store" and rec.image_location == up.location
    disk = image_file(rec)
    assert "changed" in _ls(disk, "/etc") and "server.pem.keep" in _ls(disk, "/etc")
    for gone, where in (("skip", "/srv"), ("keys", "/mnt"), ("authorized_keys", "/root/.ssh"),
                        ("id_rsa", "/home/u")):  # fmt: skip
        assert gone not in _ls(disk, where), where
    assert "dev" in _ls(disk, "/")  # a mount point stays, empty
    assert SECRET not in disk.read_bytes()  # not in the free space either
    r = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout

    bucket, client = s3
    up = bundle_upload.upload_bundle(result.manifest_path, f"s3://{bucket}/bundles")
    assert up.location == f"{bucket}/bundles/vol.manifest.xml"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == sorted(up.objects)
    rec = lifecycle.register_manifest(f"s3://{up.location}", name="from-s3")
    assert rec.image_location == up.location
    assert file_sha256(image_file(rec)) == file_sha256(disk)


def test_bundle_vol_refusals(amilab_home: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="absolute path"):
        Selection(["relative/path"])
    with pytest.raises(BadInput, match="SHA1 does not match"):
        make_key_pair(tmp_path / "cert.pem", tmp_path / "pk.pem", "user")
        img = tmp_path / "img.raw"
        img.write_bytes(b"x" * 5000)
        r = bundle.bundle_file(
            img, tmp_path / "b", "img", user="1", image_type="machine",
            architecture="x86_64", user_cert=tmp_path / "cert.pem",
            private_key=tmp_path / "pk.pem",
            ec2_cert=bundle_keys.ec2_key_pair()[0],
        )  # fmt: skip
        part = r.manifest_path.parent / r.manifest.parts[0].filename
        part.write_bytes(b"tampered")
        bundle_upload.upload_bundle(r.manifest_path, str(tmp_path / "bucket"))
    assert not (tmp_path / "bucket").exists()  # nothing sent
