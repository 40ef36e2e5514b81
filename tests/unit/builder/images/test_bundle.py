"""Bundles without a VM: the sparse tar stream against GNU tar, the manifest against the
2007-10-10 layout, interoperability with the real tools' pipeline (openssl + gunzip + tar),
an independent signature check (openssl), and every kind of tampering giving BadInput."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.images import bundle, bundle_keys, manifest, sparsetar
from tests.unit.builder.images.test_lifecycle import write_sparse as sparse_file

USER = "123456789012"


def gnu_tar(path: Path, name: str | None = None) -> bytes:
    target = path
    if name and name != path.name:
        target = path.with_name(name)
        os.link(path, target)
    out = subprocess.run(
        ["tar", "-S", "--owner=0", "--group=0", "-cf", "-", "-C", str(target.parent), target.name],
        capture_output=True,
        check=True,
    ).stdout
    if target != path:
        target.unlink()
    return out


def ours(path: Path, name: str | None = None) -> bytes:
    data = b"".join(sparsetar.file_member(path, name or path.name))
    return data + sparsetar.end_of_archive(len(data))


LAYOUTS = {
    "holes-both-ends": (1 << 20, [(40960, b"a" * 5000), (409600, b"b" * 4096)]),
    "data-at-end": (1 << 20, [(4096, b"x"), ((1 << 20) - 4096, b"y" * 4096)]),
    "no-holes": (8192, [(0, os.urandom(8192))]),
    "all-hole": (1 << 20, []),
    # more extents than the header holds (4) and than one extension block holds (21)
    "many-extents": (4 << 20, [(i * 65536, bytes([i + 1]) * 4096) for i in range(40)]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_tar_stream_is_byte_identical_to_gnu_tar_sparse(tmp_path: Path, layout: str) -> None:
    size, extents = LAYOUTS[layout]
    path = sparse_file(tmp_path / "disk.img", size, extents)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    assert ours(path) == gnu_tar(path)


def test_long_name_uses_gnu_longlink_and_round_trips(tmp_path: Path) -> None:
    name = "n" * 130
    path = sparse_file(tmp_path / "d", 1 << 20, [(8192, b"z" * 100)])
    os.utime(path, (1_700_000_000, 1_700_000_000))
    assert ours(path, name) == gnu_tar(path, name)
    got = read_back(ours(path, name), tmp_path / "out")
    assert got.name == name


def read_back(stream: bytes, out: Path, step: int = 777) -> sparsetar.Member:
    writer = sparsetar.SparseFileWriter(out)
    reader = sparsetar.TarReader(lambda m: writer)
    for i in range(0, len(stream), step):
        reader.feed(stream[i : i + step])
    reader.close()
    writer.close()
    return reader.members[0]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reader_restores_gnu_tar_output_exactly_and_sparse(tmp_path: Path, layout: str) -> None:
    size, extents = LAYOUTS[layout]
    src = sparse_file(tmp_path / "disk.img", size, extents)
    out = tmp_path / "out.img"
    member = read_back(gnu_tar(src), out)
    assert out.read_bytes() == src.read_bytes() and member.size == size
    assert out.stat().st_blocks * 512 <= max(src.stat().st_blocks * 512, 4096) + 65536


def test_reader_refuses_truncated_and_corrupt_streams(tmp_path: Path) -> None:
    src = sparse_file(tmp_path / "disk.img", 1 << 20, [(4096, b"q" * 9000)])
    stream = ours(src)
    with pytest.raises(BadInput, match="truncated"):
        read_back(stream[:2048], tmp_path / "a")
    bad = bytearray(stream)
    bad[10] ^= 0xFF  # inside the name: the header checksum no longer matches
    with pytest.raises(BadInput, match="checksum"):
        read_back(bytes(bad), tmp_path / "b")


# ---------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    bundle_keys.make_key_pair(d / "user-cert.pem", d / "user-pk.pem", "user")
    bundle_keys.make_key_pair(d / "ec2-cert.pem", d / "ec2-pk.pem", "ec2")
    bundle_keys.make_key_pair(d / "other-cert.pem", d / "other-pk.pem", "other")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    # incompressible data so the bundle needs several 10 MB parts
    return sparse_file(
        tmp_path / "disk.img",
        64 << 20,
        [(0, os.urandom(12 << 20)), (30 << 20, b"\x55" * 4096), (50 << 20, os.urandom(9 << 20))],
    )


def make_bundle(disk: Path, dest: Path, keys: dict[str, Path], **kw: object) -> bundle.BundleResult:
    args: dict = dict(
        user=USER,
        image_type="machine",
        architecture="x86_64",
        user_cert=keys["user-cert"],
        private_key=keys["user-pk"],
        ec2_cert=keys["ec2-cert"],
        kernel_id="aki-0123456789abcdef0",
        ramdisk_id="ari-0123456789abcdef0",
        block_device_mapping={"ami": "sda1", "root": "/dev/sda1"},
    )
    args.update(kw)
    return bundle.bundle_file(disk, dest, "img", **args)


def test_manifest_follows_the_2007_10_10_layout(tmp_path: Path, disk: Path, keys) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    text = r.manifest_path.read_text()
    root = ET.fromstring(text)
    assert [c.tag for c in root] == [
        "version", "bundler", "machine_configuration", "image", "signature"
    ]  # fmt: skip
    assert root.findtext("version") == "2007-10-10"
    mc = root.find("machine_configuration")
    assert [c.tag for c in mc] == [
        "architecture",
        "block_device_mapping",
        "kernel_id",
        "ramdisk_id",
    ]
    assert [m.findtext("virtual") for m in mc.iter("mapping")] == ["ami", "root"]
    image = root.find("image")
    assert [c.tag for c in image] == [
        "name", "user", "type", "digest", "size", "bundled_size", "ec2_encrypted_key",
        "user_encrypted_key", "ec2_encrypted_iv", "user_encrypted_iv", "parts",
    ]  # fmt: skip
    assert image.find("digest").get("algorithm") == "SHA1"
    assert image.find("user_encrypted_key").get("algorithm") == "AES-128-CBC"
    parts = image.findall("parts/part")
    assert image.find("parts").get("count") == str(len(parts)) and len(parts) >= 2
    files = sorted(p.name for p in (tmp_path / "b").glob("img.part.*"))
    assert (
        [p.findtext("filename") for p in parts]
        == files
        == [f"img.part.{i:02d}" for i in range(len(parts))]
    )
    for p in parts:
        part = (tmp_path / "b" / p.findtext("filename")).read_bytes()
        assert hashlib.sha1(part).hexdigest() == p.findtext("digest")
        assert len(part) <= bundle.PART_SIZE
    sizes = [(tmp_path / "b" / f).stat().st_size for f in files]
    assert all(s == 10 * 1024 * 1024 for s in sizes[:-1])
    assert int(image.findtext("bundled_size")) == sum(sizes)
    assert int(image.findtext("size")) == disk.stat().st_size


def openssl(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def test_signature_verifies_with_openssl_over_the_two_elements(
    tmp_path: Path, disk: Path, keys
) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    text = r.manifest_path.read_text()
    signed = re.search(r"<machine_configuration>.*</machine_configuration>", text).group(0)
    signed += re.search(r"<image>.*</image>", text).group(0)
    sig = bytes.fromhex(re.search(r"<signature>([0-9a-f]+)</signature>", text).group(1))
    (tmp_path / "sig").write_bytes(sig)
    (tmp_path / "data").write_text(signed)
    pub = openssl("x509", "-in", str(keys["user-cert"]), "-pubkey", "-noout")
    (tmp_path / "pub.pem").write_bytes(pub)
    out = openssl(
        "dgst", "-sha1", "-verify", str(tmp_path / "pub.pem"), "-signature",
        str(tmp_path / "sig"), str(tmp_path / "data"),
    )  # fmt: skip
    assert b"Verified OK" in out
    (tmp_path / "data").write_text(signed.replace("x86_64", "i386"))
    bad = subprocess.run(
        ["openssl", "dgst", "-sha1", "-verify", str(tmp_path / "pub.pem"), "-signature",
         str(tmp_path / "sig"), str(tmp_path / "data")], capture_output=True,
    )  # fmt: skip
    assert bad.returncode != 0


@pytest.mark.parametrize("who", ["user", "ec2"])
def test_the_real_tools_pipeline_unbundles_it(tmp_path: Path, disk: Path, keys, who) -> None:
    """What ec2-unbundle runs: RSA-decrypt the hex key/IV, then cat | openssl enc -d |
    gunzip | tar -x; the SHA1 of the tar stream is the manifest's digest."""
    r = make_bundle(disk, tmp_path / "b", keys)
    m = r.manifest
    key_field, iv_field = (
        (m.user_encrypted_key, m.user_encrypted_iv)
        if who == "user"
        else (m.ec2_encrypted_key, m.ec2_encrypted_iv)
    )
    pk = str(keys[f"{who}-pk"])
    key = openssl("pkeyutl", "-decrypt", "-inkey", pk, data=bytes.fromhex(key_field)).decode()
    iv = openssl("pkeyutl", "-decrypt", "-inkey", pk, data=bytes.fromhex(iv_field)).decode()
    assert re.fullmatch(r"[0-9a-f]{32}", key) and re.fullmatch(r"[0-9a-f]{32}", iv)
    parts = " ".join(str(tmp_path / "b" / p.filename) for p in m.parts)
    out = tmp_path / "x"
    out.mkdir()
    script = (
        f"cat {parts} | openssl enc -d -aes-128-cbc -K {key} -iv {iv} | gunzip "
        f"| tee {tmp_path}/tar | tar -xS -C {out}"
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True)
    assert hashlib.sha1((tmp_path / "tar").read_bytes()).hexdigest() == m.digest
    assert (out / "img").read_bytes() == disk.read_bytes()


def test_unbundle_restores_the_exact_bytes_and_stays_sparse(
    tmp_path: Path, disk: Path, keys
) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    out = bundle.unbundle(r.manifest_path, keys["user-pk"], tmp_path / "u")
    assert out == tmp_path / "u" / "img"
    assert out.read_bytes() == disk.read_bytes()
    assert out.stat().st_blocks * 512 < 30 << 20  # 64 MiB logical, ~21 MiB of data
    # EC2's key opens its own copies of the key and IV (what `amilab register` uses)
    again = bundle.unbundle(
        r.manifest_path, keys["ec2-pk"], tmp_path / "u2", verify_with=[keys["user-cert"]]
    )
    assert again.read_bytes() == disk.read_bytes()


def test_unbundles_a_bundle_made_by_the_real_tools_pipeline(tmp_path: Path, keys) -> None:
    """The other direction: tar -S | gzip -9 | openssl enc, split, manifest signed here."""
    src = sparse_file(tmp_path / "img", 24 << 20, [(4096, os.urandom(11 << 20))])
    key, iv = os.urandom(16).hex(), os.urandom(16).hex()
    dest = tmp_path / "b"
    dest.mkdir()
    script = (
        f"tar -S --owner 0 --group 0 -cf - -C {tmp_path} img | tee {tmp_path}/tar | gzip -9 "
        f"| openssl enc -e -aes-128-cbc -K {key} -iv {iv} | split -b 10485760 -d - {dest}/img.part."
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pub = bundle_keys.load_certificate(keys["user-cert"]).public_key()
    ec2 = bundle_keys.load_certificate(keys["ec2-cert"]).public_key()
    files = sorted(dest.glob("img.part.*"))
    seal = lambda k, s: k.encrypt(s.encode(), padding.PKCS1v15()).hex()  # noqa: E731
    m = manifest.Manifest(
        name="img", user=USER, image_type="machine", architecture="x86_64",
        digest=hashlib.sha1((tmp_path / "tar").read_bytes()).hexdigest(),
        size=src.stat().st_size, bundled_size=sum(f.stat().st_size for f in files),
        ec2_encrypted_key=seal(ec2, key), user_encrypted_key=seal(pub, key),
        ec2_encrypted_iv=seal(ec2, iv), user_encrypted_iv=seal(pub, iv),
        parts=[manifest.Part(f.name, hashlib.sha1(f.read_bytes()).hexdigest()) for f in files],
    )  # fmt: skip
    signer = bundle_keys.load_private_key(keys["user-pk"])
    m.signature = signer.sign(m.signed_text(), padding.PKCS1v15(), hashes.SHA1()).hex()
    (dest / "img.manifest.xml").write_text(m.render())
    out = bundle.unbundle(dest / "img.manifest.xml", keys["user-pk"], tmp_path / "u")
    assert out.read_bytes() == src.read_bytes()


def assert_nothing_left(d: Path) -> None:
    assert not d.exists() or not [p for p in d.iterdir()], list(d.iterdir())


def test_a_flipped_byte_in_a_part_is_refused_before_decrypting(
    tmp_path: Path, disk: Path, keys
) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    part = tmp_path / "b" / r.manifest.parts[1].filename
    data = bytearray(part.read_bytes())
    data[12345] ^= 0x01
    part.write_bytes(data)
    with pytest.raises(BadInput, match=r"part\.01: SHA1 does not match"):
        bundle.unbundle(r.manifest_path, keys["user-pk"], tmp_path / "u")
    assert_nothing_left(tmp_path / "u")


@pytest.mark.parametrize(
    "change",
    [
        ("<architecture>x86_64", "<architecture>i386"),
        ("aki-0123456789abcdef0", "aki-0123456789abcdef1"),
        ("<size>", "<size>1"),
    ],
)
def test_a_changed_manifest_fails_its_signature(tmp_path: Path, disk: Path, keys, change) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    text = r.manifest_path.read_text()
    r.manifest_path.write_text(text.replace(*change, 1))
    with pytest.raises(BadInput, match="signature does not verify"):
        bundle.unbundle(r.manifest_path, keys["user-pk"], tmp_path / "u")
    assert_nothing_left(tmp_path / "u")


def test_a_flipped_byte_anywhere_in_the_manifest_is_refused(
    tmp_path: Path, disk: Path, keys
) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    raw = r.manifest_path.read_bytes()
    # <bundler>'s text is informational and, as in ec2-ami-tools, outside the signature
    unsigned = range(raw.index(b"<bundler>"), raw.index(b"</bundler>"))
    for at in range(0, len(raw), 17):
        if at in unsigned:
            continue
        bad = bytearray(raw)
        bad[at] ^= 0x04
        r.manifest_path.write_bytes(bad)
        with pytest.raises(BadInput):
            bundle.unbundle(r.manifest_path, keys["user-pk"], tmp_path / "u")
    assert_nothing_left(tmp_path / "u")


def test_a_wrong_private_key_is_refused(tmp_path: Path, disk: Path, keys) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    with pytest.raises(BadInput, match="signature does not verify"):
        bundle.unbundle(r.manifest_path, keys["other-pk"], tmp_path / "u")
    # even with the right certificate to check the signature, the key cannot open it
    with pytest.raises(BadInput, match="wrong key"):
        bundle.unbundle(
            r.manifest_path, keys["other-pk"], tmp_path / "u", verify_with=[keys["user-cert"]]
        )
    assert_nothing_left(tmp_path / "u")


@pytest.mark.parametrize("how", ["missing", "truncated", "extra"])
def test_an_incomplete_upload_is_refused(tmp_path: Path, disk: Path, keys, how: str) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    last = tmp_path / "b" / r.manifest.parts[-1].filename
    if how == "missing":
        last.unlink()
    elif how == "truncated":
        last.write_bytes(last.read_bytes()[:-1000])
    else:
        last.write_bytes(last.read_bytes() + b"x")
    with pytest.raises(BadInput, match="missing|truncated"):
        bundle.unbundle(r.manifest_path, keys["user-pk"], tmp_path / "u")
    assert_nothing_left(tmp_path / "u")


def test_bundle_refuses_a_key_that_is_not_the_certificates(
    tmp_path: Path, disk: Path, keys
) -> None:
    with pytest.raises(BadInput, match="not the private key"):
        make_bundle(disk, tmp_path / "b", keys, private_key=keys["other-pk"])
    assert_nothing_left(tmp_path / "b")


def test_part_names_in_a_manifest_cannot_leave_its_directory(
    tmp_path: Path, disk: Path, keys
) -> None:
    r = make_bundle(disk, tmp_path / "b", keys)
    text = r.manifest_path.read_text().replace("<filename>img.part.00", "<filename>../img.part.00")
    r.manifest_path.write_text(text)
    with pytest.raises(BadInput, match="not a plain file name"):
        bundle.unbundle(r.manifest_path, keys["user-pk"], tmp_path / "u")
