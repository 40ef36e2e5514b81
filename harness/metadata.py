"""An instance's metadata and the document the metadata service serves from it.

`InstanceMetadata` is what EC2 knew about a launch; `document()` turns it into the tree that
`harness.imds_cgi` walks (strings are bodies, objects carry their listing under ""). The
basics live here; EC2's per-version differences, user-data, dynamic/ and IMDSv2 grow here
too (issue 5) without touching the per-request code.
"""

from __future__ import annotations

import json
import marshal
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# The versions EC2's metadata service lists at `/` (a dated prefix serves that API version).
VERSIONS: tuple[str, ...] = (
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
    "latest",
)


@dataclass
class InstanceMetadata:
    """What the metadata service tells one instance; field names follow EC2's paths."""

    ami_id: str
    instance_id: str
    public_key: str = ""  # one OpenSSH line; no key means no public-keys/ at all
    key_name: str = "amilab"
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    instance_type: str = "m1.small"
    availability_zone: str = "us-east-1a"
    local_ipv4: str = "169.254.0.15"
    hostname: str = ""
    ami_launch_index: int = 0
    reservation_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.hostname:
            # EC2-Classic style internal name derived from the address.
            self.hostname = "ip-" + self.local_ipv4.replace(".", "-") + ".ec2.internal"
        if not self.reservation_id:
            self.reservation_id = "r-" + self.instance_id.split("-", 1)[-1]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceMetadata:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown metadata keys: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dir(children: dict[str, Any], listing: list[str] | None = None) -> dict[str, Any]:
    """A directory node: its listing is one entry per line, subdirectories with `/`."""
    if listing is None:
        listing = [k + "/" if isinstance(v, dict) else k for k, v in sorted(children.items())]
    node = dict(children)
    node[""] = "\n".join(listing)
    return node


def meta_data(md: InstanceMetadata) -> dict[str, Any]:
    leaves: dict[str, Any] = {
        "ami-id": md.ami_id,
        "ami-launch-index": str(md.ami_launch_index),
        "hostname": md.hostname,
        "instance-id": md.instance_id,
        "instance-type": md.instance_type,
        "local-hostname": md.hostname,
        "local-ipv4": md.local_ipv4,
        "placement": _dir({"availability-zone": md.availability_zone}),
        "reservation-id": md.reservation_id,
    }
    # EC2 omits kernel-id/ramdisk-id entirely (not listed, 404) when the launch has none.
    if md.kernel_id:
        leaves["kernel-id"] = md.kernel_id
    if md.ramdisk_id:
        leaves["ramdisk-id"] = md.ramdisk_id
    if md.public_key:
        key0 = _dir({"openssh-key": md.public_key.strip() + "\n"})
        leaves["public-keys"] = _dir({"0": key0}, listing=[f"0={md.key_name}"])
    return _dir(leaves)


def document(md: InstanceMetadata) -> dict[str, Any]:
    """The whole tree: `/` lists the versions, each version lists `meta-data` (no slash, as
    EC2 writes it at that level)."""
    version = _dir({"meta-data": meta_data(md)}, listing=["meta-data"])
    return _dir({v: version for v in VERSIONS}, listing=list(VERSIONS))


def write_document(md: InstanceMetadata, path: Path) -> Path:
    """Write the document for `imds_cgi` (marshal, see there) at `path`, and the same as JSON
    beside it for people and tools. Atomically: the service may be answering a request."""
    doc = document(md)
    for target, data in (
        (path, marshal.dumps(doc)),
        (path.with_suffix(".json"), json.dumps(doc, indent=1).encode()),
    ):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return path
