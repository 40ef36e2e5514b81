"""Instance-store bundles as ec2-bundle-image made them, and their unbundling.

A bundle is the image tarred (`tar --sparse`, SHA1 over the tar stream), gzipped, encrypted
with AES-128-CBC under a fresh key and IV, and cut into 10 MB parts `<prefix>.part.NN`,
described by `<prefix>.manifest.xml` (version 2007-10-10). As in ec2-ami-tools, the key and
IV are random bytes written as hex, and it is that hex text that is RSA-encrypted (PKCS#1
v1.5) to the user's certificate and to EC2's, and that `openssl enc -K/-iv` takes; the
signature is RSA-SHA1 over the `<machine_configuration>` and `<image>` elements exactly as
they stand in the file. So a bundle made here unbundles with the real tools' pipeline
(`cat parts | openssl enc -d | gunzip | tar -x`) and the other way round.

amilab plays EC2's part with a key pair of its own (see ec2_key_pair): `--ec2cert`
defaults to its certificate, and `amilab register` decrypts with its private key. Signing
certificates that `bundle` used are remembered per account (as uploading an X.509 signing
certificate to AWS did) so that `register` can check a manifest's signature.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import os
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from builder import paths
from builder.errors import BadInput
from builder.images import sparsetar, transfer

MANIFEST_VERSION = "2007-10-10"
PART_SIZE = 10 * 1024 * 1024  # ec2-ami-tools' CHUNK_SIZE
CIPHER = "AES-128-CBC"
DIGEST = "SHA1"
BUNDLER = ("amilab", "0.1.0", "1")
# Element order the 2007-10-10 manifest has (ec2-ami-tools' ManifestV20071010#init);
# optional elements are marked with "?".
TOP_ORDER = ("version", "bundler", "machine_configuration?", "image", "signature")
MACHINE_ORDER = ("architecture", "block_device_mapping?", "kernel_id?", "ramdisk_id?",
                 "product_codes?")  # fmt: skip
IMAGE_ORDER = ("name", "user", "type", "kernel_name?", "ancestry?", "digest", "size",
               "bundled_size", "ec2_encrypted_key", "user_encrypted_key", "ec2_encrypted_iv",
               "user_encrypted_iv", "parts")  # fmt: skip
IMAGE_TYPES = ("machine", "kernel", "ramdisk")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# what ec2-ami-tools (REXML), amilab and other bundlers put before <manifest>
_DECLARATIONS = (
    "",
    "<?xml version='1.0'?>",
    '<?xml version="1.0"?>',
    '<?xml version="1.0" ?>',
    '<?xml version="1.0" encoding="UTF-8"?>',
    "<?xml version='1.0' encoding='UTF-8'?>",
)
_BUNDLER_FIELDS = {  # unsigned as well: at least their shape is checked
    "name": re.compile(r"[A-Za-z][A-Za-z0-9._-]*"),
    "version": re.compile(r"[0-9][0-9A-Za-z._-]*"),
    "release": re.compile(r"[0-9A-Za-z._-]*"),
}


# ----------------------------------------------------------------------------- keys


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BadInput(f"{path}: not a readable PEM private key ({e})") from e
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadInput(f"{path}: not an RSA private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: not a readable PEM X.509 certificate ({e})") from e


def _rsa_public(cert: x509.Certificate, where: str) -> rsa.RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadInput(f"{where}: the certificate's key is not RSA")
    return key


def make_key_pair(cert_path: Path, key_path: Path, common_name: str, days: int = 3650) -> None:
    """A 2048-bit RSA key and a self-signed certificate for it (PEM), as `openssl req -x509`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_path.with_name(key_path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    os.rename(tmp, key_path)
    tmp_cert = cert_path.with_name(cert_path.name + f".tmp{os.getpid()}")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.rename(tmp_cert, cert_path)


def ec2_key_pair() -> tuple[Path, Path]:
    """amilab's stand-in for EC2's certificate and key: (cert, key), made on first use.

    Like EC2's, it is one per user rather than one per registry: bundles made against one
    AMILAB_HOME register in another ($AMILAB_EC2_KEYS, else $XDG_CONFIG_HOME/amilab/ec2)."""
    if configured := os.environ.get("AMILAB_EC2_KEYS"):
        d = Path(configured)
    else:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        d = Path(config) / "amilab" / "ec2"
    cert, key = d / "ec2-cert.pem", d / "ec2-pk.pem"
    if cert.exists() and key.exists():
        return cert, key
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:  # two first uses at once make one key pair
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cert.exists() and key.exists()):
            make_key_pair(cert, key, "amilab-ec2")
    return cert, key


def _signing_dir(account: str) -> Path:
    return paths.amilab_home() / "signing-certs" / account


def remember_signing_cert(account: str, cert_path: Path) -> None:
    cert = load_certificate(cert_path)
    fp = cert.fingerprint(hashes.SHA1()).hex()
    d = _signing_dir(account)
    d.mkdir(parents=True, exist_ok=True)
    dest = d / f"{fp}.pem"
    if not dest.exists():
        dest.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def signing_certs(account: str) -> list[Path]:
    d = _signing_dir(account)
    return sorted(d.glob("*.pem")) if d.is_dir() else []


# ------------------------------------------------------------------------- manifest


@dataclass
class Part:
    filename: str
    digest: str  # hex SHA1 of the part file
    size: int = 0


@dataclass
class Manifest:
    name: str
    user: str
    image_type: str
    architecture: str
    digest: str  # hex SHA1 of the tar stream
    size: int
    bundled_size: int
    ec2_encrypted_key: str
    user_encrypted_key: str
    ec2_encrypted_iv: str
    user_encrypted_iv: str
    parts: list[Part]
    block_device_mapping: dict[str, str] = field(default_factory=dict)
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    kernel_name: str | None = None
    signature: str = ""
    bundler: tuple[str, str, str] = BUNDLER
    text: str = ""  # the file as read, for the signature check

    def machine_configuration_xml(self) -> str:
        x = f"<architecture>{escape(self.architecture)}</architecture>"
        if self.block_device_mapping:
            x += "<block_device_mapping>"
            for virtual in sorted(self.block_device_mapping):
                device = self.block_device_mapping[virtual]
                x += f"<mapping><virtual>{escape(virtual)}</virtual>"
                x += f"<device>{escape(device)}</device></mapping>"
            x += "</block_device_mapping>"
        if self.kernel_id:
            x += f"<kernel_id>{escape(self.kernel_id)}</kernel_id>"
        if self.ramdisk_id:
            x += f"<ramdisk_id>{escape(self.ramdisk_id)}</ramdisk_id>"
        return f"<machine_configuration>{x}</machine_configuration>"

    def image_xml(self) -> str:
        alg = f' algorithm="{CIPHER}"'
        x = f"<name>{escape(self.name)}</name><user>{escape(self.user)}</user>"
        x += f"<type>{self.image_type}</type>"
        if self.kernel_name:
            x += f"<kernel_name>{escape(self.kernel_name)}</kernel_name>"
        x += f'<digest algorithm="{DIGEST}">{self.digest}</digest>'
        x += f"<size>{self.size}</size><bundled_size>{self.bundled_size}</bundled_size>"
        x += f"<ec2_encrypted_key{alg}>{self.ec2_encrypted_key}</ec2_encrypted_key>"
        x += f"<user_encrypted_key{alg}>{self.user_encrypted_key}</user_encrypted_key>"
        x += f"<ec2_encrypted_iv>{self.ec2_encrypted_iv}</ec2_encrypted_iv>"
        x += f"<user_encrypted_iv>{self.user_encrypted_iv}</user_encrypted_iv>"
        x += f'<parts count="{len(self.parts)}">'
        for i, p in enumerate(self.parts):
            x += f'<part index="{i}"><filename>{escape(p.filename)}</filename>'
            x += f'<digest algorithm="{DIGEST}">{p.digest}</digest></part>'
        return f"<image>{x}</parts></image>"

    def signed_text(self) -> bytes:
        return (self.machine_configuration_xml() + self.image_xml()).encode()

    def render(self) -> str:
        name, version, release = self.bundler
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<manifest>'
            f"<version>{MANIFEST_VERSION}</version>"
            f"<bundler><name>{escape(name)}</name><version>{escape(version)}</version>"
            f"<release>{escape(release)}</release></bundler>"
            f"{self.machine_configuration_xml()}{self.image_xml()}"
            f"<signature>{self.signature}</signature></manifest>\n"
        )


def _check_order(parent: ET.Element, order: tuple[str, ...], what: str) -> None:
    tags = [c.tag for c in parent]
    i = 0
    for tag in tags:
        while i < len(order) and order[i].rstrip("?") != tag:
            if not order[i].endswith("?"):
                raise BadInput(f"manifest: <{what}> lacks <{order[i]}> before <{tag}>")
            i += 1
        if i == len(order):
            raise BadInput(f"manifest: <{what}> has <{tag}> out of order or unexpected")
        i += 1
    missing = [o for o in order[i:] if not o.endswith("?")]
    if missing:
        raise BadInput(f"manifest: <{what}> lacks <{missing[0]}>")


def _text(el: ET.Element, path: str, required: bool = True) -> str | None:
    node = el.find(path)
    if node is None or node.text is None:
        if required:
            raise BadInput(f"manifest: <{path}> is missing or empty")
        return None
    return node.text.strip()


def _raw_element(text: str, tag: str) -> str:
    """The element exactly as it stands in the file (what ec2-ami-tools' XMLUtil.get_xml
    cuts out), so the signature is checked over the signed bytes, not a re-rendering."""
    start = text.find(f"<{tag}>")
    end = text.find(f"</{tag}>")
    if start < 0 or end < start:
        return ""
    return text[start : end + len(tag) + 3]


def parse_manifest(path: Path) -> Manifest:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{path}: cannot read the manifest ({e.strerror})") from e
    try:
        text = raw.decode("utf-8")
        # the declaration is outside the signature: only the forms bundlers write pass
        decl = text[: text.find("<manifest>")] if "<manifest>" in text else text
        if decl.strip() not in _DECLARATIONS:
            raise BadInput(f"{path}: unexpected XML declaration {decl.strip()[:60]!r}")
        root = ET.fromstring(text)
    except (UnicodeDecodeError, ET.ParseError) as e:
        raise BadInput(f"{path}: not a well-formed manifest ({e})") from e
    if root.tag != "manifest":
        raise BadInput(f"{path}: root element is <{root.tag}>, not <manifest>")
    version = _text(root, "version")
    if version != MANIFEST_VERSION:
        raise BadInput(f"{path}: manifest version {version}, only {MANIFEST_VERSION} is known")
    _check_order(root, TOP_ORDER, "manifest")
    mc = root.find("machine_configuration")
    if mc is not None:
        _check_order(mc, MACHINE_ORDER, "machine_configuration")
    image = root.find("image")
    assert image is not None
    _check_order(image, IMAGE_ORDER, "image")
    bdm = {}
    for mapping in root.findall("machine_configuration/block_device_mapping/mapping"):
        bdm[_text(mapping, "virtual") or ""] = _text(mapping, "device") or ""
    parts = []
    for i, part in enumerate(image.findall("parts/part")):
        if part.get("index") != str(i):
            raise BadInput(f"{path}: part {i} has index {part.get('index')!r}")
        filename = _text(part, "filename") or ""
        if not _SAFE_NAME.match(filename) or ".." in filename:
            raise BadInput(f"{path}: part file name {filename!r} is not a plain file name")
        digest = (_text(part, "digest") or "").lower()
        if not re.fullmatch(r"[0-9a-f]{40}", digest):
            raise BadInput(f"{path}: part {filename} has no SHA1 digest")
        parts.append(Part(filename, digest))
    parts_el = image.find("parts")
    assert parts_el is not None
    if parts_el.get("count") != str(len(parts)) or not parts:
        raise BadInput(f"{path}: parts count {parts_el.get('count')!r} but {len(parts)} parts")
    image_type = _text(image, "type") or ""
    if image_type not in IMAGE_TYPES:
        raise BadInput(f"{path}: image type {image_type!r} is not one of {IMAGE_TYPES}")
    digest = (_text(image, "digest") or "").lower()
    if not re.fullmatch(r"[0-9a-f]{40}", digest):
        raise BadInput(f"{path}: image digest is not a SHA1")
    try:
        size, bundled = int(_text(image, "size") or ""), int(_text(image, "bundled_size") or "")
    except ValueError as e:
        raise BadInput(f"{path}: size or bundled_size is not a number") from e
    bundler = root.find("bundler")
    if bundler is not None:
        for key, shape in _BUNDLER_FIELDS.items():
            value = bundler.findtext(key) or ""
            if not shape.fullmatch(value):
                raise BadInput(f"{path}: <bundler><{key}> {value[:40]!r} is not well-formed")
    m = Manifest(
        name=_text(image, "name") or "",
        user=_text(image, "user") or "",
        image_type=image_type,
        architecture=(_text(root, "machine_configuration/architecture", False) or "x86_64"),
        digest=digest,
        size=size,
        bundled_size=bundled,
        ec2_encrypted_key=_text(image, "ec2_encrypted_key") or "",
        user_encrypted_key=_text(image, "user_encrypted_key") or "",
        ec2_encrypted_iv=_text(image, "ec2_encrypted_iv") or "",
        user_encrypted_iv=_text(image, "user_encrypted_iv") or "",
        parts=parts,
        block_device_mapping=bdm,
        kernel_id=_text(root, "machine_configuration/kernel_id", False),
        ramdisk_id=_text(root, "machine_configuration/ramdisk_id", False),
        kernel_name=_text(image, "kernel_name", False),
        signature=_text(root, "signature") or "",
        bundler=tuple(_text(bundler, k, False) or "" for k in ("name", "version", "release"))  # type: ignore[arg-type]
        if bundler is not None
        else BUNDLER,
        text=text,
    )
    return m


def verify_signature(m: Manifest, public_key: rsa.RSAPublicKey) -> bool:
    signed = _raw_element(m.text, "machine_configuration") + _raw_element(m.text, "image")
    try:
        public_key.verify(
            bytes.fromhex(m.signature), signed.encode(), padding.PKCS1v15(), hashes.SHA1()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


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
    if not _SAFE_NAME.match(prefix):
        raise BadInput(f"prefix {prefix!r}: use letters, digits, '.', '_', '+', '-'")
    if image_type not in IMAGE_TYPES:
        raise BadInput(f"image type {image_type!r} is not one of {IMAGE_TYPES}")
    user_pub = _rsa_public(load_certificate(user_cert), str(user_cert))
    ec2_pub = _rsa_public(load_certificate(ec2_cert), str(ec2_cert))
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
        _rsa_public(load_certificate(c), str(c)) for c in certs or []
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
        if not _SAFE_NAME.match(name):
            raise BadInput(f"{what}: image name {name!r} in the tar stream is not a plain name")
        final = dest / name
        os.rename(tmp, final)
        return final
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
