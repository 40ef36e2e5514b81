"""The bundle manifest (version 2007-10-10, as ec2-ami-tools write it): its fields, its
rendering, a strict parse of a file, and the check of its signature.

The signature is RSA-SHA1 over the `<machine_configuration>` and `<image>` elements exactly
as they stand in the file, so a manifest is checked over the bytes that were signed, never a
re-rendering of them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from builder.errors import BadInput

MANIFEST_VERSION = "2007-10-10"
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
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
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
        if not SAFE_NAME.match(filename) or ".." in filename:
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
