"""Instance-store bundles as ec2-bundle-image made them, and their unbundling.

A bundle is the image tarred (`tar --sparse`, SHA1 over the tar stream), gzipped, encrypted
with AES-128-CBC under a fresh key and IV, and cut into 10 MB parts `<prefix>.part.NN`,
described by `<prefix>.manifest.xml` (version 2007-10-10). As in ec2-ami-tools, the key and
IV are random bytes written as hex, and it is that hex text that is RSA-encrypted (PKCS#1
v1.5) to the user's certificate and to EC2's, and that `openssl enc -K/-iv` takes; the
signature is RSA-SHA1 over the `<machine_configuration>` and `<image>` elements exactly as
they stand in the file. So a bundle made here unbundles with the real tools' pipeline
(`cat parts | openssl enc -d | gunzip | tar -x`) and the other way round.

The manifest is manifest.py's, the keys and certificates bundle_keys.py's.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from builder.errors import BadInput
from builder.images import sparsetar, transfer
from builder.images.bundle_keys import load_certificate, load_private_key, rsa_public
from builder.images.manifest import (
    IMAGE_TYPES,
    SAFE_NAME,
    Manifest,
    Part,
    parse_manifest,
    verify_signature,
)

PART_SIZE = 10 * 1024 * 1024  # ec2-ami-tools' CHUNK_SIZE


# --------------------------------------------------------------------------- bundle


@dataclass
class BundleResult:
    manifest_path: Path
    manifest: Manifest
    seconds: float = 0.0
    image_id: str = ""  # the registered image it was made from, when it was one

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "ImageId": self.image_id, "ManifestPath": str(self.manifest_path), "Name": m.name,
            "Digest": m.digest, "Size": m.size, "BundledSize": m.bundled_size,
            "Parts": [p.filename for p in m.parts], "Seconds": round(self.seconds, 3),
        }  # fmt: skip


class _PartWriter:
    """Cuts the encrypted stream into PART_SIZE files, hashing each as it is written."""

    def __init__(self, dest: Path, prefix: str) -> None:
        self.dest = dest
        self.prefix = prefix
        self.parts: list[Part] = []
        self.temp_paths: list[Path] = []
        self._f: object | None = None
        self._h = hashlib.sha1()
        self._n = 0
        self._token = secrets.token_hex(4)

    def _open(self) -> None:
        path = self.dest / f".{self.prefix}.part.{len(self.temp_paths)}.{self._token}"
        self.temp_paths.append(path)
        self._f = open(path, "wb")  # noqa: SIM115 - closed when the part is full
        self._h = hashlib.sha1()
        self._n = 0

    def _close_part(self) -> None:
        assert self._f is not None
        self._f.close()  # type: ignore[attr-defined]
        self.parts.append(Part("", self._h.hexdigest(), self._n))
        self._f = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._f is None:
                self._open()
            take = min(len(view), PART_SIZE - self._n)
            piece = view[:take]
            self._f.write(piece)  # type: ignore[union-attr]
            self._h.update(piece)
            self._n += take
            view = view[take:]
            if self._n == PART_SIZE:
                self._close_part()

    def finish(self) -> list[Part]:
        if self._f is not None:
            self._close_part()
        # NN: two digits at least, more when there are more parts than that holds
        width = max(2, len(str(len(self.parts))))
        for i, (part, tmp) in enumerate(zip(self.parts, self.temp_paths, strict=True)):
            part.filename = f"{self.prefix}.part.{i:0{width}d}"
            os.rename(tmp, self.dest / part.filename)
        return self.parts

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()  # type: ignore[attr-defined]
        for path in self.temp_paths:
            path.unlink(missing_ok=True)
        for part in self.parts:
            if part.filename:
                (self.dest / part.filename).unlink(missing_ok=True)


def _hex_key() -> bytes:
    """ec2-ami-tools' key and IV: 16 random bytes as 32 hex characters (bin2hex)."""
    return secrets.token_bytes(16).hex().encode()


def bundle_file(
    image: Path,
    dest: Path,
    prefix: str,
    *,
    user: str,
    image_type: str,
    architecture: str,
    user_cert: Path,
    private_key: Path,
    ec2_cert: Path,
    kernel_id: str | None = None,
    ramdisk_id: str | None = None,
    block_device_mapping: dict[str, str] | None = None,
    kernel_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BundleResult:
    """Bundle one image file into DEST: parts first, the manifest last (its presence means
    the bundle is whole). Nothing is left behind when it fails."""
    started = time.monotonic()
    if not SAFE_NAME.match(prefix):
        raise BadInput(f"prefix {prefix!r}: use letters, digits, '.', '_', '+', '-'")
    if image_type not in IMAGE_TYPES:
        raise BadInput(f"image type {image_type!r} is not one of {IMAGE_TYPES}")
    user_pub = rsa_public(load_certificate(user_cert), str(user_cert))
    ec2_pub = rsa_public(load_certificate(ec2_cert), str(ec2_cert))
    signer = load_private_key(private_key)
    if signer.public_key().public_numbers() != user_pub.public_numbers():
        raise BadInput(f"{private_key}: is not the private key of the certificate {user_cert}")
    dest.mkdir(parents=True, exist_ok=True)
    size = image.stat().st_size
    key_hex, iv_hex = _hex_key(), _hex_key()
    tar_sha1 = hashlib.sha1()
    written = [0]

    def tar_stream() -> Iterator[bytes]:
        report = (lambda done: progress(done, size)) if progress else None
        for chunk in sparsetar.file_member(image, prefix, report):
            written[0] += len(chunk)
            yield chunk
        yield sparsetar.end_of_archive(written[0])

    writer = _PartWriter(dest, prefix)
    aes = transfer.AesCbcEncrypt(bytes.fromhex(key_hex.decode()), bytes.fromhex(iv_hex.decode()))
    try:
        # three stages, each in its own thread: read+SHA1, gzip, encrypt+split+write
        transfer.pipe(
            transfer.compressed(transfer.threaded(tar_stream()), tar_sha1.update),
            lambda chunk: writer.write(aes.update(chunk)),
        )
        writer.write(aes.finalize())
        parts = writer.finish()
    except BaseException:
        writer.abort()
        raise

    def seal(pub: rsa.RSAPublicKey, secret: bytes) -> str:
        return pub.encrypt(secret, padding.PKCS1v15()).hex()

    m = Manifest(
        name=prefix,
        user=user,
        image_type=image_type,
        architecture=architecture,
        digest=tar_sha1.hexdigest(),
        size=size,
        bundled_size=sum(p.size for p in parts),
        ec2_encrypted_key=seal(ec2_pub, key_hex),
        user_encrypted_key=seal(user_pub, key_hex),
        ec2_encrypted_iv=seal(ec2_pub, iv_hex),
        user_encrypted_iv=seal(user_pub, iv_hex),
        parts=parts,
        block_device_mapping=block_device_mapping or {},
        kernel_id=kernel_id,
        ramdisk_id=ramdisk_id,
        kernel_name=kernel_name,
    )
    m.signature = signer.sign(m.signed_text(), padding.PKCS1v15(), hashes.SHA1()).hex()
    m.text = m.render()
    manifest_path = dest / f"{prefix}.manifest.xml"
    tmp = manifest_path.with_name(manifest_path.name + f".tmp{os.getpid()}")
    tmp.write_text(m.text)
    os.rename(tmp, manifest_path)
    return BundleResult(manifest_path, m, time.monotonic() - started)


# ------------------------------------------------------------------------- unbundle


def decrypt_key_iv(m: Manifest, key: rsa.RSAPrivateKey, where: str) -> tuple[bytes, bytes]:
    """The AES key and IV, from the user's copies or else EC2's (whichever this key opens)."""
    for key_field, iv_field in (
        (m.user_encrypted_key, m.user_encrypted_iv),
        (m.ec2_encrypted_key, m.ec2_encrypted_iv),
    ):
        try:
            k = key.decrypt(bytes.fromhex(key_field), padding.PKCS1v15())
            iv = key.decrypt(bytes.fromhex(iv_field), padding.PKCS1v15())
            k_bin, iv_bin = bytes.fromhex(k.decode("ascii")), bytes.fromhex(iv.decode("ascii"))
        except ValueError:
            continue
        if len(k_bin) == 16 and len(iv_bin) == 16:
            return k_bin, iv_bin
    raise BadInput(f"{where}: cannot decrypt the bundle's key with this private key (wrong key)")


def unbundle(
    manifest_path: Path,
    private_key: Path,
    dest: Path,
    *,
    source_dir: Path | None = None,
    verify_with: list[Path] | None = None,
    out_name: str | None = None,
) -> Path:
    """Verify and restore the image a bundle holds; returns its path in DEST.

    Order of checks: the manifest's signature (with `verify_with` certificates, or else the
    public half of PRIVATE_KEY, i.e. the user's own), then for each part its size and SHA1
    before any of it is decrypted, then at the end the SHA1 of the tar stream and the image
    size. On any failure the partial output is removed and BadInput says why."""
    m = parse_manifest(manifest_path)
    key = load_private_key(private_key)
    check_signature(m, manifest_path, verify_with, key)
    aes_key, iv = decrypt_key_iv(m, key, str(private_key))
    return restore_parts(m, manifest_path, aes_key, iv, dest, source_dir, out_name)


def check_signature(
    m: Manifest,
    manifest_path: Path,
    certs: list[Path] | None,
    key: rsa.RSAPrivateKey | None = None,
) -> None:
    publics: list[rsa.RSAPublicKey] = [
        rsa_public(load_certificate(c), str(c)) for c in certs or []
    ]
    if not publics and key is not None:
        publics.append(key.public_key())
    if not publics:
        raise BadInput(f"{manifest_path}: no certificate to check the signature with")
    if not any(verify_signature(m, pub) for pub in publics):
        raise BadInput(
            f"{manifest_path}: manifest signature does not verify "
            "(the manifest was changed, or this is not the signer's key/certificate)"
        )


def restore_parts(
    m: Manifest,
    manifest_path: Path,
    aes_key: bytes,
    iv: bytes,
    dest: Path,
    source_dir: Path | None = None,
    out_name: str | None = None,
) -> Path:
    src = source_dir or manifest_path.parent
    for part in m.parts:  # all present before any work, as a truncated upload shows here
        p = src / part.filename
        if not p.is_file():
            raise BadInput(f"{p}: bundle part is missing")
    total = sum((src / p.filename).stat().st_size for p in m.parts)
    if total != m.bundled_size:
        raise BadInput(
            f"{manifest_path}: parts hold {total} bytes, the manifest says {m.bundled_size} "
            "(truncated or extra data)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    what = f"bundle {m.name}"
    members: list[sparsetar.Member] = []
    tmp = dest / f".{m.name}.unbundle.{secrets.token_hex(4)}"
    out = sparsetar.SparseFileWriter(tmp)

    def on_member(member: sparsetar.Member) -> sparsetar.SparseFileWriter:
        if members:
            raise BadInput(f"{what}: the tar stream holds more than the image")
        members.append(member)
        return out

    def decrypted() -> Iterator[bytes]:
        aes = transfer.AesCbcDecrypt(aes_key, iv, what)
        for part in m.parts:
            data = (src / part.filename).read_bytes()
            if hashlib.sha1(data).hexdigest() != part.digest:
                raise BadInput(f"{src / part.filename}: SHA1 does not match the manifest (corrupt)")
            yield aes.update(data)
        yield aes.finalize()

    tar_sha1 = hashlib.sha1()
    gunzip = transfer.GunzipStage(what)
    reader = sparsetar.TarReader(on_member)

    def sink(plain: bytes) -> None:
        tar_sha1.update(plain)
        reader.feed(plain)

    try:
        # the worker reads, checks, decrypts and inflates; this thread hashes and writes
        plain = transfer.decompressed(transfer.threaded(decrypted()), gunzip)
        transfer.pipe(plain, sink)
        gunzip.close()
        reader.close()
        out.close()
        if tar_sha1.hexdigest() != m.digest:
            raise BadInput(f"{what}: SHA1 of the tar stream does not match the manifest")
        if not members:
            raise BadInput(f"{what}: the tar stream holds no image")
        if members[0].size != m.size or tmp.stat().st_size != m.size:
            raise BadInput(f"{what}: image is {members[0].size} bytes, manifest says {m.size}")
        name = out_name or members[0].name
        if not SAFE_NAME.match(name):
            raise BadInput(f"{what}: image name {name!r} in the tar stream is not a plain name")
        final = dest / name
        os.rename(tmp, final)
        return final
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
