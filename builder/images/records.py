"""Image records: EC2's fields, the typed settings a launch reads, and their registry rows.

EC2's RegisterImage parameters (name, architecture, virtualization, kernel, ramdisk, root
device) are the record's own fields. What amilab itself needs to boot an image, or to pick the
ramdisk that goes with a kernel, is typed: `LaunchSettings` for a machine image,
`KernelSettings` for an AKI, `RamdiskSettings` for an ARI. `extra` keeps what only people read
(the recipe, logs, timings, the import's inspection report, where a copy came from).

A registry row is the JSON of `record_to_dict`. Rows written before the typed settings
existed kept all of this in `extra`; `record_from_dict` lifts those keys into the typed
fields, so an old row and a new one of the same image read back as the same record.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from builder.images import shapes

IMAGE_TYPES = ("machine", "kernel", "ramdisk")
# where a record of each image type keeps its typed settings (the others stay at defaults)
SETTINGS_FIELD = {
    "machine": "launch",
    "kernel": "kernel_settings",
    "ramdisk": "ramdisk_settings",
}


@dataclass
class Partition:
    offset: int  # bytes from the start of the disk
    size: int


@dataclass
class LaunchSettings:
    """How a machine image boots here, beyond EC2's fields on the record."""

    disk_size: int | None = None
    partitioning: str | None = None  # none | mbr | gpt
    partitions: dict[str, Partition] = field(default_factory=dict)  # bios | esp | root
    fs_offset: int = 0  # where the root filesystem starts on the disk
    root_label: str | None = None
    root_uuid: str | None = None
    root_partuuid: str | None = None
    boot: str | None = None  # bios | uefi | hybrid: the firmware its bootloader serves
    kernel_release: str | None = None  # the release its /lib/modules was built for
    kernel_releases: list[str] = field(default_factory=list)  # found on the disk (imports)
    kernel_cmdline: str = ""  # added to the kernel's own command line (paravirtual)
    imported: bool = False  # booted through VM Import's copy-on-write preparation

    @property
    def firmware(self) -> str:
        """The firmware an HVM launch uses unless asked for another: UEFI only for a disk
        that boots nothing else, since SeaBIOS starts faster."""
        return "uefi" if self.boot == "uefi" else "bios"

    @property
    def expected_release(self) -> str:
        """The `uname -r` a launch of its own bootloader should show."""
        if self.kernel_release:
            return self.kernel_release
        if len(self.kernel_releases) == 1:  # an imported disk: what inspection found
            return str(self.kernel_releases[0])
        return ""


@dataclass
class KernelSettings:
    """An AKI's own launch details."""

    definition: str | None = None  # kernels/<definition>.yaml, or "pv-grub"
    package: str | None = None  # the Debian package its vmlinuz came from
    cmdline: str | None = None  # its console and arguments, before the image's
    pv_grub: bool = False  # boots the kernel the image's GRUB menu names


@dataclass
class RamdiskSettings:
    """An ARI's own launch details: which kernel's drivers it carries."""

    kind: str | None = None  # generated | distro | ...
    built_for: str | None = None  # the AKI ID whose modules it holds


@dataclass
class ImageRecord:
    """One registered image. Field names follow EC2 up to `launch_permissions`."""

    image_id: str
    image_type: str
    name: str
    architecture: str = "x86_64"
    description: str = ""
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    virtualization_type: str | None = None
    root_device_name: str | None = None
    root_device_type: str | None = None
    block_device_mappings: list[dict[str, Any]] = field(default_factory=list)
    state: str = "available"
    image_location: str = ""
    creation_date: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    kernel_release: str | None = None
    package_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Who registered it and who may launch it (EC2's OwnerId and launchPermission attribute).
    # Records written before these fields existed read back with the defaults.
    owner_id: str = ""
    public: bool = False
    launch_permissions: list[str] = field(default_factory=list)
    # The bytes: sha256 of an AKI's or ARI's file, the sparse digest of an AMI's raw disk,
    # and each stored format's path (describe-images shows them as Locations).
    digest: str | None = None
    locations: dict[str, str] = field(default_factory=dict)
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    kernel_settings: KernelSettings = field(default_factory=KernelSettings)
    ramdisk_settings: RamdiskSettings = field(default_factory=RamdiskSettings)

    def describe(self) -> dict[str, Any]:
        """The `aws ec2 describe-images` shape."""
        return shapes.describe_image(self)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ------------------------------------------------------------------------ rows


def record_to_dict(rec: ImageRecord) -> dict[str, Any]:
    """The row's JSON: the record with only its own image type's settings."""
    out = asdict(rec)
    for image_type, name in SETTINGS_FIELD.items():
        if image_type != rec.image_type:
            del out[name]
    return out


def record_from_dict(row: dict[str, Any]) -> ImageRecord:
    """A record from a row of either shape: typed settings as stored, or (a row written
    before they existed) lifted out of `extra`."""
    data = copy.deepcopy(row)
    image_type = data.get("image_type", "")
    own = SETTINGS_FIELD.get(image_type)
    stored = {name: data.pop(name) for name in SETTINGS_FIELD.values() if name in data}
    if own is not None and own not in stored:
        data["extra"] = dict(data.get("extra") or {})
        data.update(_lift_legacy(image_type, data["extra"]))
    else:
        data.update({name: _settings_from(name, value) for name, value in stored.items()})
    return ImageRecord(**data)


_SETTINGS_CLASS: dict[str, Any] = {
    "launch": LaunchSettings,
    "kernel_settings": KernelSettings,
    "ramdisk_settings": RamdiskSettings,
}


def _settings_from(name: str, value: dict[str, Any]) -> Any:
    value = dict(value)
    if "partitions" in value:
        value["partitions"] = _partitions(value["partitions"])
    return _SETTINGS_CLASS[name](**value)


def _partitions(spans: dict[str, dict[str, int]] | None) -> dict[str, Partition]:
    return {role: Partition(**span) for role, span in (spans or {}).items()}


# Keys of a pre-typed row's `extra` and the typed field each became, per image type.
_LEGACY_KEYS: dict[str, dict[str, str]] = {
    "machine": {
        f.name: f.name for f in fields(LaunchSettings) if f.name not in ("partitioning",)
    },
    "kernel": {"definition": "definition", "package": "package", "cmdline": "cmdline",
               "pv_grub": "pv_grub"},  # fmt: skip
    "ramdisk": {"kind": "kind", "kernel_id": "built_for"},
}
_LEGACY_DIGEST = {"machine": "disk_digest", "kernel": "digest", "ramdisk": "digest"}
_TABLE_NAMES = {"gpt": "gpt", "msdos": "mbr", "dos": "mbr", "mbr": "mbr"}


def partitioning_of(inspected: dict[str, Any]) -> str:
    """none, mbr or gpt, from libguestfs's report of a disk's partition table."""
    return _TABLE_NAMES.get(str(inspected.get("table")), "none")


def _lift_legacy(image_type: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Move the keys a launch reads out of an old row's `extra` (which is changed) into
    the typed fields; informational keys stay where they were."""
    lifted: dict[str, Any] = {}
    if (digest := extra.pop(_LEGACY_DIGEST[image_type], None)) is not None:
        lifted["digest"] = digest
    if locations := extra.pop("locations", None):
        lifted["locations"] = dict(locations)
    kw: dict[str, Any] = {}
    for key, name in _LEGACY_KEYS[image_type].items():
        if key in extra:
            value = extra.pop(key)
            if value is not None:  # a None stood for "not known": the typed default
                kw[name] = value
    if image_type == "machine":
        partitioning = extra.get("partitioning")
        if isinstance(partitioning, str) or partitioning is None:
            extra.pop("partitioning", None)
            kw["partitioning"] = partitioning
        else:  # an import's: libguestfs's report of the table stays in the report
            kw["partitioning"] = partitioning_of(partitioning)
        kw["partitions"] = _partitions(kw.get("partitions"))
        kw["imported"] = bool(kw.get("imported", False))
    own = SETTINGS_FIELD[image_type]
    lifted[own] = _SETTINGS_CLASS[own](**kw)
    return lifted
