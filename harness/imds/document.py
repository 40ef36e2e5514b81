"""An instance's metadata and the document the metadata service serves from it.

`InstanceMetadata` is what EC2 knew about a launch; `document()` turns it into the tree that
`harness.imds.protocol` walks (strings and bytes are bodies, objects carry their listing
under ""). EC2's
per-version differences are settled here, once per instance, so the per-request code only
walks; the IMDSv2 settings ride along under a key no request path can reach.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import time
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
    """What the metadata service tells one instance; field names follow EC2's paths (and the
    launch's `MetadataOptions` for the http_* switches)."""

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
    # EC2 says "(unknown)" for EBS-backed images; instance-store ones name their manifest
    ami_manifest_path: str = "(unknown)"
    # slirp's NIC gets QEMU's default MAC unless the launch sets one
    mac: str = "52:54:00:12:34:56"
    security_groups: list[str] = field(default_factory=lambda: ["default"])
    # device names as the AMI's mapping gives them (`ami`, `root`, `ebsN`, `ephemeralN`, `swap`)
    block_device_mapping: dict[str, str] = field(
        default_factory=lambda: {"ami": "/dev/sda1", "root": "/dev/sda1"}
    )
    user_data: bytes | str | None = None  # None: 404, as EC2 answers a launch without any
    tags: dict[str, str] = field(default_factory=dict)
    instance_metadata_tags: bool = False  # EC2 serves tags/instance/ only when enabled
    iam_role: str | None = None
    account_id: str = "123456789012"
    architecture: str = "x86_64"
    pending_time: str = ""
    http_tokens: str = "optional"  # "required": IMDSv2 only
    http_endpoint: str = "enabled"  # "disabled": every request is 403
    # the IP TTL of token responses: `imds serve` sets it, so a client more hops away than
    # this (a container behind a bridge, a routed network) never gets a token; the guest's
    # path through slirp's user-mode TCP has no TTL of its own to carry it
    http_put_response_hop_limit: int = 1
    # keys the IMDSv2 tokens; lives in the document (never served) so that every
    # per-connection process can check a token another one issued
    token_secret: str = field(default_factory=lambda: os.urandom(32).hex())
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.hostname:
            # EC2-Classic style internal name derived from the address.
            self.hostname = "ip-" + self.local_ipv4.replace(".", "-") + ".ec2.internal"
        if not self.reservation_id:
            self.reservation_id = "r-" + self.instance_id.split("-", 1)[-1]
        if not self.pending_time:
            self.pending_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.http_tokens not in ("optional", "required"):
            raise ValueError(f"http_tokens: {self.http_tokens!r} is not optional or required")
        if self.http_endpoint not in ("enabled", "disabled"):
            raise ValueError(f"http_endpoint: {self.http_endpoint!r} is not enabled or disabled")
        if not 1 <= self.http_put_response_hop_limit <= 64:
            raise ValueError("http_put_response_hop_limit: must be 1-64")

    @property
    def region(self) -> str:
        # an availability zone is its region plus one letter (us-east-1a → us-east-1)
        zone = self.availability_zone
        return zone[:-1] if zone[-1:].isalpha() else zone

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceMetadata:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown metadata keys: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_device_mapping(root_device: str | None, mappings: list[dict[str, Any]]) -> dict[str, str]:
    """EC2's meta-data names for an AMI's `BlockDeviceMappings`: the root device is both
    `ami` and `root`, other EBS volumes are `ebs1`, `ebs2`, …, instance-store volumes keep
    their virtual name (`ephemeralN`, `swap`, and `ami` for instance-store images)."""
    root = root_device or "/dev/sda1"
    out = {"ami": root, "root": root}
    ebs = 0
    for m in mappings:
        device = str(m.get("DeviceName") or "")
        virtual = str(m.get("VirtualName") or "")
        if not device or "NoDevice" in m:
            continue
        if virtual:
            out[virtual] = device
        elif "Ebs" in m and device != root:
            ebs += 1
            out[f"ebs{ebs}"] = device
    return out


# The first version that served each meta-data category (EC2's "Instance metadata
# categories" table); a dated prefix serves only what existed at that date. Versions EC2
# never listed (e.g. region's 2020-08-24) map to the next one that it does list.
SINCE: dict[str, str] = {
    "ami-id": "1.0",
    "ami-launch-index": "1.0",
    "ami-manifest-path": "1.0",
    "hostname": "1.0",
    "instance-id": "1.0",
    "local-ipv4": "1.0",
    "public-keys": "1.0",
    "reservation-id": "1.0",
    "security-groups": "1.0",
    "local-hostname": "2007-01-19",
    "instance-type": "2007-08-29",
    "block-device-mapping": "2007-12-15",
    "kernel-id": "2008-02-01",
    "ramdisk-id": "2008-02-01",
    "placement": "2008-02-01",
    "mac": "2011-01-01",
    "network": "2011-01-01",
    "iam": "2012-01-12",
    "services": "2014-02-25",
    "placement/region": "2020-10-27",
    "tags": "2021-03-23",
    "spot": "2014-11-05",
    "events": "2018-08-17",
    "dynamic": "2009-04-04",
}


def _has(version: str, category: str) -> bool:
    # "latest" and the dated names sort after "1.0" and in date order as strings
    return version == "latest" or VERSIONS.index(version) >= VERSIONS.index(SINCE[category])


def _dir(children: dict[str, Any], listing: list[str] | None = None) -> dict[str, Any]:
    """A directory node: its listing is one entry per line, subdirectories with `/`."""
    if listing is None:
        listing = [k + "/" if isinstance(v, dict) else k for k, v in sorted(children.items())]
    node = dict(children)
    node[""] = "\n".join(listing)
    return node


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def maintenance_time(epoch: float) -> str:
    """EC2's date in maintenance events: `21 Jan 2019 09:00:43 GMT` (day not padded; month
    names in English whatever the locale)."""
    t = time.gmtime(epoch)
    return f"{t.tm_mday} {_MONTHS[t.tm_mon - 1]} {t.tm_year} {time.strftime('%H:%M:%S', t)} GMT"


def maintenance_json(events: list[dict[str, Any]]) -> str:
    """events/maintenance/scheduled or /history: a JSON list in EC2's key order, pretty-printed
    with " : " as EC2 prints it; `[]` when there is none (EC2 answers 200 with that)."""
    out = [
        {
            "NotBefore": maintenance_time(e["NotBefore"]),
            "Code": e["Code"],
            "Description": e["Description"],
            "EventId": e["EventId"],
            "NotAfter": maintenance_time(e["NotAfter"]),
            "State": e["State"],
        }
        for e in sorted(events, key=lambda e: e["NotBefore"])
    ]
    return json.dumps(out, indent=2, separators=(",", " : ")) if out else "[]"


def _identity_document(md: InstanceMetadata) -> str:
    doc = {
        "accountId": md.account_id,
        "architecture": md.architecture,
        "availabilityZone": md.availability_zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": md.ami_id,
        "instanceId": md.instance_id,
        "instanceType": md.instance_type,
        "kernelId": md.kernel_id,
        "pendingTime": md.pending_time,
        "privateIp": md.local_ipv4,
        "ramdiskId": md.ramdisk_id,
        "region": md.region,
        "version": "2017-09-30",
    }
    # EC2 pretty-prints it with " : " between key and value
    return json.dumps(doc, indent=2, separators=(",", " : "))


def _iam(md: InstanceMetadata) -> dict[str, Any]:
    assert md.iam_role
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    # placeholder credentials (nothing here can sign for real AWS) in EC2's shape; they
    # expire six hours after the document was written, as EC2's rotation period
    seed = hashlib.sha256(f"{md.instance_id}/{md.iam_role}".encode()).hexdigest().upper()
    creds = {
        "Code": "Success",
        "LastUpdated": stamp,
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIA" + seed[:16],
        "SecretAccessKey": seed[16:56],
        "Token": "amilab/" + seed,
        "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 6 * 3600)),
    }
    info = {
        "Code": "Success",
        "LastUpdated": stamp,
        "InstanceProfileArn": f"arn:aws:iam::{md.account_id}:instance-profile/{md.iam_role}",
        "InstanceProfileId": "AIPA" + seed[:17],
    }
    return _dir(
        {
            "info": json.dumps(info, indent=2),
            "security-credentials": _dir({md.iam_role: json.dumps(creds, indent=2)}),
        }
    )


def _interface(md: InstanceMetadata) -> dict[str, Any]:
    eni = "eni-" + md.instance_id.split("-", 1)[-1]
    return _dir(
        {
            "device-number": "0",
            "interface-id": eni,
            "local-hostname": md.hostname,
            "local-ipv4s": md.local_ipv4,
            "mac": md.mac,
            "owner-id": md.account_id,
            "security-groups": "\n".join(md.security_groups),
        }
    )


def meta_data(md: InstanceMetadata, version: str = "latest") -> dict[str, Any]:
    placement = {"availability-zone": md.availability_zone}
    if _has(version, "placement/region"):
        placement["region"] = md.region
    leaves: dict[str, Any] = {
        "ami-id": md.ami_id,
        "ami-launch-index": str(md.ami_launch_index),
        "ami-manifest-path": md.ami_manifest_path,
        "block-device-mapping": _dir(dict(md.block_device_mapping)),
        "hostname": md.hostname,
        "instance-id": md.instance_id,
        "instance-type": md.instance_type,
        "local-hostname": md.hostname,
        "local-ipv4": md.local_ipv4,
        "mac": md.mac,
        "network": _dir({"interfaces": _dir({"macs": _dir({md.mac: _interface(md)})})}),
        "placement": _dir(placement),
        "reservation-id": md.reservation_id,
        "security-groups": "\n".join(md.security_groups),
        "services": _dir({"domain": "amazonaws.com", "partition": "aws"}),
    }
    # EC2 omits kernel-id/ramdisk-id entirely (not listed, 404) when the launch has none.
    if md.kernel_id:
        leaves["kernel-id"] = md.kernel_id
    if md.ramdisk_id:
        leaves["ramdisk-id"] = md.ramdisk_id
    if md.public_key:
        key0 = _dir({"openssh-key": md.public_key.strip() + "\n"})
        leaves["public-keys"] = _dir({"0": key0}, listing=[f"0={md.key_name}"])
    if md.iam_role:
        leaves["iam"] = _iam(md)
    if spot := md.extra.get("spot"):
        # an announced interruption (run-instances --spot-interruption-after), as EC2 serves it
        action = json.dumps({"action": spot["Action"], "time": spot["Time"]})
        leaves["spot"] = _dir({"instance-action": action, "termination-time": spot["Time"]})
    events = md.extra.get("events") or []
    leaves["events"] = _dir({"maintenance": _dir({
        "history": maintenance_json([e for e in events if e["State"] != "active"]),
        "scheduled": maintenance_json([e for e in events if e["State"] == "active"]),
    })})  # fmt: skip
    if md.instance_metadata_tags and md.tags:
        leaves["tags"] = _dir({"instance": _dir(dict(md.tags))})
    return _dir({k: v for k, v in leaves.items() if _has(version, k)})


SETTINGS_KEY = "/imds"  # a request path splits on "/", so no request can reach this key


def document(md: InstanceMetadata) -> dict[str, Any]:
    """The whole tree: `/` lists the versions, each version lists `meta-data` (no slash, as
    EC2 writes it at that level), `dynamic` and `user-data` when there is any. Versions
    that had the same categories share one subtree (marshal writes it once)."""
    shared: dict[tuple[bool, ...], dict[str, Any]] = {}
    versions: dict[str, Any] = {}
    user_data = md.user_data.encode() if isinstance(md.user_data, str) else md.user_data
    for v in VERSIONS:
        key = tuple(_has(v, c) for c in SINCE)
        if key not in shared:
            children: dict[str, Any] = {"meta-data": meta_data(md, v)}
            if _has(v, "dynamic"):
                identity = _dir({"document": _identity_document(md)})
                children["dynamic"] = _dir({"instance-identity": identity})
            if user_data is not None:
                children["user-data"] = user_data
            shared[key] = _dir(children, listing=sorted(children))
        versions[v] = shared[key]
    tree = _dir(versions, listing=list(VERSIONS))
    tree[SETTINGS_KEY] = {
        "http_tokens": md.http_tokens,
        "http_endpoint": md.http_endpoint,
        "token_secret": md.token_secret,
        "hop_limit": md.http_put_response_hop_limit,
    }
    return tree


def write_document(md: InstanceMetadata, path: Path) -> Path:
    """Write the document for `imds_cgi` (marshal, see there) at `path`, and the same as JSON
    beside it for people and tools. Atomically: the service may be answering a request."""
    doc = document(md)
    for target, data in (
        (path, marshal.dumps(doc)),
        # user-data is bytes; the JSON copy is for reading, so undecodable bytes become U+FFFD
        (path.with_suffix(".json"), json.dumps(doc, indent=1, default=_text).encode()),
    ):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return path


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
