"""The VMDK text descriptor: header keys, extent lines, and the disk database (ddb.*)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from builder.errors import BadInput

MAX_DESCRIPTOR_BYTES = 1 << 20
MAX_EXTENTS = 4096

CREATE_TYPES = {
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
    "vmfsThin",
}
# These give the guest a host device or a delta chain: nothing to convert, and a device
# path is a way to read the host's disks through qemu.
_REFUSED_TYPES = {
    "fullDevice": "a host device",
    "partitionedDevice": "host partitions",
    "vmfsRaw": "a raw device mapping",
    "vmfsRDM": "a raw device mapping",
    "vmfsRawDeviceMap": "a raw device mapping",
    "vmfsPassthroughRawDeviceMap": "a raw device mapping",
    "vmfsSparse": "an ESX delta disk",
    "custom": "a custom layout",
}
EXTENT_TYPES = {"FLAT", "SPARSE", "ZERO", "VMFS"}
_REFUSED_EXTENTS = {"VMFSSPARSE", "VMFSRDM", "VMFSRAW"}

_EXTENT_RE = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+(\d{1,20})\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d{1,20}))?)?\s*$'
)
_KEY_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_.]*)\s*=\s*(.*)$")


@dataclass(frozen=True)
class ExtentLine:
    access: str
    sectors: int
    type: str
    filename: str | None
    offset: int  # sectors into the file (FLAT/VMFS only)
    line: int


@dataclass
class Descriptor:
    create_type: str
    extents: list[ExtentLine]
    keys: dict[str, str] = field(default_factory=dict)
    ddb: dict[str, str] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return sum(e.sectors for e in self.extents)


def looks_like_descriptor(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    return text.startswith(b"# Disk DescriptorFile") or b"createType" in head[:4096]


def parse_descriptor(data: bytes, where: str) -> Descriptor:
    """Parse descriptor text (an embedded descriptor is cut at its first NUL)."""
    data = data.split(b"\0", 1)[0]
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise BadInput(f"{where}: descriptor: larger than {MAX_DESCRIPTOR_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{where}: descriptor: not UTF-8 text (byte {e.start})") from None
    keys: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[ExtentLine] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT_RE.match(line)
        if m:
            extents.append(_extent(m, number, where))
            if len(extents) > MAX_EXTENTS:
                raise BadInput(f"{where}: descriptor: more than {MAX_EXTENTS} extents")
            continue
        k = _KEY_RE.match(line)
        if not k:
            raise BadInput(f"{where}:{number}: descriptor: cannot parse {line[:60]!r}")
        key, value = k.group(1), _unquote(k.group(2))
        (ddb if key.startswith("ddb.") else keys)[key] = value
    return _checked(Descriptor(keys.get("createType", ""), extents, keys, ddb), where)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _extent(m: re.Match[str], number: int, where: str) -> ExtentLine:
    access, sectors, type_, filename, offset = m.groups()
    if type_ in _REFUSED_EXTENTS:
        raise BadInput(f"{where}:{number}: extent type: {type_} is not supported")
    if type_ not in EXTENT_TYPES:
        raise BadInput(f"{where}:{number}: extent type: {type_} is unknown")
    if type_ == "ZERO":
        if filename is not None:
            raise BadInput(f"{where}:{number}: extent: a ZERO extent has no file")
    elif not filename:
        raise BadInput(f"{where}:{number}: extent: {type_} extent without a file name")
    if offset is not None and type_ not in ("FLAT", "VMFS"):
        raise BadInput(f"{where}:{number}: extent offset: only FLAT extents have one")
    n = int(sectors)
    if n == 0:
        raise BadInput(f"{where}:{number}: extent size: 0 sectors")
    return ExtentLine(access, n, type_, filename, int(offset or 0), number)


def _checked(d: Descriptor, where: str) -> Descriptor:
    from builder.disk.vmdk.header import MAX_CAPACITY_SECTORS

    if not d.create_type:
        raise BadInput(f"{where}: descriptor.createType: missing")
    if d.create_type in _REFUSED_TYPES:
        raise BadInput(
            f"{where}: descriptor.createType: {d.create_type} ({_REFUSED_TYPES[d.create_type]})"
            " is not supported"
        )
    if d.create_type not in CREATE_TYPES:
        raise BadInput(f"{where}: descriptor.createType: {d.create_type!r} is unknown")
    version = d.keys.get("version", "1")
    if version not in ("1", "2", "3"):
        raise BadInput(f"{where}: descriptor.version: {version!r} (1, 2 or 3 expected)")
    parent = d.keys.get("parentCID", "ffffffff").lower()
    if parent != "ffffffff" or "parentFileNameHint" in d.keys:
        raise BadInput(
            f"{where}: descriptor.parentCID: a delta disk (it has a parent); "
            "import the consolidated disk"
        )
    if not d.extents:
        raise BadInput(f"{where}: descriptor: no extent lines")
    if d.capacity > MAX_CAPACITY_SECTORS:
        raise BadInput(
            f"{where}: descriptor: extents add up to {d.capacity} sectors, over the "
            f"{MAX_CAPACITY_SECTORS} sector (64 TiB) limit"
        )
    return d


def render_descriptor(
    create_type: str,
    extents: list[tuple[str, int, str, str]],
    cid: int,
    ddb: dict[str, str],
) -> str:
    """Descriptor text as VMware writes it; extents are (access, sectors, type, filename)."""
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        f"CID={cid:08x}",
        "parentCID=ffffffff",
        f'createType="{create_type}"',
        "",
        "# Extent description",
    ]
    lines += [f'{a} {n} {t} "{f}"' for a, n, t, f in extents]
    lines += ["", "# The Disk Data Base", "#DDB", ""]
    lines += [f'{k} = "{v}"' for k, v in ddb.items()]
    return "\n".join(lines) + "\n"
