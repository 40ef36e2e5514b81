"""OVA and OVF packages: safe unpacking, the OVF's disks and controllers, .mf digests.

An OVA is a tar archive of untrusted members. They are unpacked only as plain files with
plain names into a private directory (no paths, links, devices or sparse members), and a
manifest's digests must match before any disk is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BadInput

OVF_NAMESPACES = {
    "http://schemas.dmtf.org/ovf/envelope/1": "1.x",
    "http://schemas.dmtf.org/ovf/envelope/2": "2.0",
}
MAX_OVF_BYTES = 16 << 20
MAX_MEMBERS = 1000
_DIGESTS = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_MF_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)$")
_CHUNK = 4 << 20

# rasd:ResourceType values (CIM_ResourceAllocationSettingData) for storage controllers.
_CONTROLLERS = {"5": "ide", "6": "scsi", "20": "sata", "36": "nvme"}
_DISK_RESOURCE = "17"


@dataclass
class OvfDisk:
    disk_id: str
    file_ref: str | None
    href: str | None
    capacity: int  # bytes
    format: str
    controller: str | None = None  # e.g. "scsi lsilogic", "sata AHCI", "ide PIIX4"
    populated_size: int | None = None


@dataclass
class Ovf:
    version: str
    name: str | None
    os_description: str | None
    files: dict[str, dict[str, Any]]  # ovf:id -> {"href", "size", "compression"}
    disks: list[OvfDisk]


@dataclass
class Package:
    """An OVF with its files in `directory` (the private unpack directory for an OVA)."""

    ovf_path: Path
    ovf: Ovf
    directory: Path
    manifest: dict[str, tuple[str, str]] = field(default_factory=dict)
    verified: list[str] = field(default_factory=list)

    def disk_paths(self) -> list[Path]:
        return [self.directory / d.href for d in self.ovf.disks if d.href]

    def describe(self) -> dict[str, Any]:
        return {
            "ovf": self.ovf_path.name,
            "ovfVersion": self.ovf.version,
            "name": self.ovf.name,
            "os": self.ovf.os_description,
            "disks": [vars(d) for d in self.ovf.disks],
            "manifestVerified": self.verified,
        }


def plain_name(name: str, where: str, what: str) -> str:
    """A file name with no directory part: the only kind an OVF package may contain."""
    if name.startswith("./"):
        name = name[2:]
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name.startswith("-")
    ):
        raise BadInput(f"{where}: {what} {name!r}: escapes the package directory")
    return name


# --- OVF ---------------------------------------------------------------------------------


def parse_ovf(data: bytes, where: str) -> Ovf:
    if len(data) > MAX_OVF_BYTES:
        raise BadInput(f"{where}: OVF: larger than {MAX_OVF_BYTES} bytes")
    # Entities are the XML bomb and external-entity vector; OVF never needs a DTD.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadInput(f"{where}: OVF: a DOCTYPE/ENTITY declaration is not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise BadInput(f"{where}:{e.position[0]}: OVF: not well-formed XML ({e})") from None
    ns, local = _split(root.tag)
    if local != "Envelope" or ns not in OVF_NAMESPACES:
        raise BadInput(f"{where}: OVF: root element {root.tag} is not an OVF 1.x/2.0 Envelope")
    version = OVF_NAMESPACES[ns]
    files = {}
    for f in _all(root, ns, "References", "File"):
        fid = _attr(f, ns, "id", where, "File")
        href = plain_name(_attr(f, ns, "href", where, "File"), where, "File href")
        size = _opt_int(f, ns, "size", where, f"File {fid} size")
        files[fid] = {"href": href, "size": size, "compression": _opt(f, ns, "compression")}
    disks = []
    for d in _all(root, ns, "DiskSection", "Disk"):
        disk_id = _attr(d, ns, "diskId", where, "Disk")
        ref = _opt(d, ns, "fileRef")
        if ref is not None and ref not in files:
            raise BadInput(f"{where}: Disk {disk_id} fileRef: {ref!r} is not in References")
        capacity = _capacity(d, ns, where, disk_id)
        disks.append(
            OvfDisk(
                disk_id=disk_id,
                file_ref=ref,
                href=files[ref]["href"] if ref else None,
                capacity=capacity,
                format=_opt(d, ns, "format") or "",
                populated_size=_opt_int(d, ns, "populatedSize", where, f"Disk {disk_id}"),
            )
        )
    _attach_controllers(root, disks)
    vs = next(iter(_all(root, ns, "VirtualSystem")), None)
    name = None
    os_desc = None
    if vs is not None:
        name = _opt(vs, ns, "id")
        for child in vs.iter():
            _, lname = _split(child.tag)
            if lname == "Name" and child.text:
                name = child.text.strip()
            if lname == "OperatingSystemSection":
                desc = next((c for c in child if _split(c.tag)[1] == "Description"), None)
                os_desc = desc.text.strip() if desc is not None and desc.text else None
    return Ovf(version, name, os_desc, files, disks)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _all(root: ET.Element, ns: str, *path: str) -> list[ET.Element]:
    return root.findall("/".join(f"{{{ns}}}{p}" for p in path))


def _opt(el: ET.Element, ns: str, name: str) -> str | None:
    return el.get(f"{{{ns}}}{name}", el.get(name))


def _attr(el: ET.Element, ns: str, name: str, where: str, what: str) -> str:
    value = _opt(el, ns, name)
    if not value:
        raise BadInput(f"{where}: {what}: ovf:{name} is missing")
    return value


def _opt_int(el: ET.Element, ns: str, name: str, where: str, what: str) -> int | None:
    value = _opt(el, ns, name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 20:
        raise BadInput(f"{where}: {what}: ovf:{name} {value!r} is not a number")
    return int(value)


_UNIT_RE = re.compile(r"^byte(?:\s*\*\s*(2|10)\^(\d{1,2}))?$")
_NAMED_UNITS = {"bytes": 1, "kilobytes": 1 << 10, "megabytes": 1 << 20, "gigabytes": 1 << 30}


def _capacity(d: ET.Element, ns: str, where: str, disk_id: str) -> int:
    value = _opt(d, ns, "capacity")
    if value is None or not value.isdigit() or len(value) > 20:
        raise BadInput(f"{where}: Disk {disk_id} capacity: {value!r} is not a number")
    units = (_opt(d, ns, "capacityAllocationUnits") or "byte").strip()
    m = _UNIT_RE.match(units)
    if m:
        factor = int(m.group(1)) ** int(m.group(2)) if m.group(1) else 1
    elif units.lower() in _NAMED_UNITS:
        factor = _NAMED_UNITS[units.lower()]
    else:
        raise BadInput(
            f"{where}: Disk {disk_id} capacityAllocationUnits: {units!r} is not understood"
        )
    capacity = int(value) * factor
    if capacity <= 0 or capacity > 1 << 46:
        raise BadInput(f"{where}: Disk {disk_id} capacity: {capacity} bytes is out of range")
    return capacity


def _attach_controllers(root: ET.Element, disks: list[OvfDisk]) -> None:
    # Items and StorageItems use the rasd/sasd namespaces; only local names matter.
    items = []
    for el in root.iter():
        if _split(el.tag)[1] in ("Item", "StorageItem"):
            items.append({_split(c.tag)[1]: (c.text or "").strip() for c in el})
    by_id = {i.get("InstanceID"): i for i in items}
    for item in items:
        if item.get("ResourceType") != _DISK_RESOURCE:
            continue
        host = item.get("HostResource", "")
        disk_id = host.rsplit("/", 1)[-1]
        parent = by_id.get(item.get("Parent"))
        if not parent:
            continue
        kind = _CONTROLLERS.get(parent.get("ResourceType", ""), "other")
        sub = parent.get("ResourceSubType")
        for d in disks:
            if d.disk_id == disk_id:
                d.controller = f"{kind} {sub}" if sub else kind


# --- manifest ----------------------------------------------------------------------------


def parse_manifest(data: bytes, where: str) -> dict[str, tuple[str, str]]:
    if len(data) > 1 << 20:
        raise BadInput(f"{where}: manifest: larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{where}: manifest: not UTF-8 text") from None
    entries: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _MF_LINE.match(line)
        if not m:
            raise BadInput(f"{where}:{number}: manifest: cannot parse {line[:60]!r}")
        algo, name, digest = m.groups()
        name = plain_name(name, f"{where}:{number}", "manifest entry")
        if len(digest) != hashlib.new(_DIGESTS[algo]).digest_size * 2:
            raise BadInput(f"{where}:{number}: {algo}({name}): digest has the wrong length")
        entries[name] = (algo, digest.lower())
    return entries


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(_DIGESTS[algo])
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(pkg: Package, mf_name: str) -> None:
    names = {pkg.ovf_path.name, *(f["href"] for f in pkg.ovf.files.values())}
    for name in sorted(names):
        if name not in pkg.manifest:
            raise BadInput(f"{mf_name}: {name}: not covered by the manifest")
    for name, (algo, want) in sorted(pkg.manifest.items()):
        path = pkg.directory / name
        if not path.is_file():
            raise BadInput(f"{mf_name}: {algo}({name}): file is missing from the package")
        if file_digest(path, algo) != want:
            raise BadInput(f"{mf_name}: {algo}({name}): digest mismatch")
        pkg.verified.append(name)


# --- opening -----------------------------------------------------------------------------


def open_ovf(path: Path) -> Package:
    """An .ovf with its files beside it; a .mf of the same stem is verified if present."""
    from builder.disk.vmdk.safefile import open_regular, resolve_extent

    fd = open_regular(path, path.name)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_OVF_BYTES + 1)
    ovf = parse_ovf(data, path.name)
    for info in ovf.files.values():
        resolve_extent(path.parent, info["href"], path.name)  # symlinks out are refused
    pkg = Package(path, ovf, path.parent)
    mf = path.with_suffix(".mf")
    if mf.exists():
        pkg.manifest = parse_manifest(mf.read_bytes(), mf.name)
        _verify(pkg, mf.name)
    _check_files(pkg, path.name)
    return pkg


def open_ova(path: Path, directory: Path) -> Package:
    """Unpack an OVA into `directory` (created private; must not exist) and open its OVF."""
    from builder.disk.vmdk.safefile import open_regular

    directory.mkdir(mode=0o700)
    where = path.name
    fd = open_regular(path, where)
    members: list[str] = []
    try:
        with os.fdopen(fd, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                name = _member_name(member, where)
                if name in members:
                    raise BadInput(f"{where}: member {name!r}: appears twice")
                members.append(name)
                if len(members) > MAX_MEMBERS:
                    raise BadInput(f"{where}: more than {MAX_MEMBERS} members")
                _extract(tar, member, directory / name, where)
    except tarfile.TarError as e:
        raise BadInput(f"{where}: not a valid OVA (tar): {e}") from None
    ovfs = [m for m in members if m.lower().endswith(".ovf")]
    if len(ovfs) != 1:
        raise BadInput(f"{where}: {len(ovfs)} .ovf descriptors (exactly one expected)")
    ovf_path = directory / ovfs[0]
    ovf = parse_ovf(ovf_path.read_bytes(), f"{where}/{ovfs[0]}")
    pkg = Package(ovf_path, ovf, directory)
    mfs = [m for m in members if m.lower().endswith(".mf")]
    if len(mfs) > 1:
        raise BadInput(f"{where}: {len(mfs)} manifests (at most one expected)")
    if mfs:
        pkg.manifest = parse_manifest((directory / mfs[0]).read_bytes(), f"{where}/{mfs[0]}")
        _verify(pkg, f"{where}/{mfs[0]}")
    _check_files(pkg, where)
    return pkg


def _member_name(member: tarfile.TarInfo, where: str) -> str:
    kind = (
        "a symlink" if member.issym() else
        "a hard link" if member.islnk() else
        "a directory" if member.isdir() else
        "a device or FIFO" if not member.isreg() else
        "a sparse member" if member.issparse() else None
    )
    if kind:
        raise BadInput(f"{where}: member {member.name!r}: {kind} (only plain files allowed)")
    return plain_name(member.name, where, "member")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, where: str) -> None:
    src = tar.extractfile(member)
    assert src is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(dest, flags, 0o600)
    try:
        left = member.size
        while left:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                raise BadInput(f"{where}: member {member.name!r}: truncated")
            # Keep runs of zeros as holes: flat disks in OVAs are mostly empty.
            if chunk.count(0) == len(chunk):
                os.lseek(out, len(chunk), os.SEEK_CUR)
            else:
                os.write(out, chunk)
            left -= len(chunk)
        os.ftruncate(out, member.size)
    finally:
        os.close(out)


def _check_files(pkg: Package, where: str) -> None:
    for fid, info in pkg.ovf.files.items():
        path = pkg.directory / info["href"]
        if not path.is_file():
            raise BadInput(f"{where}: File {fid} ({info['href']}): missing from the package")
        if info["compression"] not in (None, "", "identity"):
            raise BadInput(
                f"{where}: File {fid} compression: {info['compression']!r} is not supported"
            )
        size = path.stat().st_size
        if info["size"] is not None and info["size"] != size:
            raise BadInput(
                f"{where}: File {fid} size: {info['size']} in the OVF, {size} bytes in the file"
            )
