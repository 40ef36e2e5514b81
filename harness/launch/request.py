"""What a launch asks for: the settings every launching command shares, each declared once.

`boot` and `smoke` (and later `run-instances` and the matrix) take the same launch settings:
which kernel and ramdisk, accelerator, disk format and bus, firmware, layers, and what
RunInstances takes for the instance's metadata. Each is one field of `LaunchRequest` whose
`Flag` metadata is its command-line form, as a recipe key's `Key` is its YAML form
(builder/build/schema.py): `harness.cli.flags` turns the fields into argparse options and
parsed options back into a request, so name, default, choices and help live here only.
`plan()` and `options()` turn a request into the LaunchPlan and LaunchOptions every launch
needs, the same way for each command.

EC2's own limits on the metadata settings apply when a request is made, so a launch that EC2
would refuse is refused before anything runs, with a one-line error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.disk.formats import format_names
from builder.errors import BadInput
from harness.launch.accel import ACCELERATORS

if TYPE_CHECKING:  # the CLI reads the declarations when it starts; launching needs the rest
    from builder.images.registry import ImageRecord
    from harness.launch.accel import Accelerator
    from harness.launch.plan import LaunchPlan
    from harness.launch.steps import LaunchOptions

USER_DATA_MAX = 16 * 1024  # EC2: "user data is limited to 16 KB, in raw form"
MAX_TAGS = 50
# EC2's rule for tag keys when instance metadata tags are on: each key becomes a path
_METADATA_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
_ROLE = re.compile(r"[\w+=,.@-]{1,64}")

METADATA_GROUP = "instance metadata (as RunInstances takes them)"


@dataclass(frozen=True)
class Flag:
    """A launch setting's command-line form. A bool field becomes a switch, a list field a
    repeatable option; `single_help` marks a list a one-instance command takes once."""

    option: str
    help: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None
    group: str | None = None
    single_help: str | None = None


def setting(default: Any, option: str, help: str | None = None, **flag: Any) -> Any:
    """A request field with its flag; lists get a fresh one per request."""
    meta = {"flag": Flag(option, help, **flag)}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


def metadata_setting(default: Any, option: str, help: str, **flag: Any) -> Any:
    """A setting RunInstances takes for the instance's metadata (one group in --help)."""
    return setting(default, option, help, group=METADATA_GROUP, **flag)


@dataclass(kw_only=True)
class LaunchRequest:
    """The launch settings; a command's request adds its own fields (BootRequest,
    SmokeRequest). Field order is the order of the options in --help."""

    kernels: list[str] = setting(
        [],
        "--kernel",
        "boot with this kernel instead (repeat: one instance per kernel)",
        metavar="AKI",
        single_help="boot with this kernel (aki- ID or name)",
    )
    ramdisk: str | None = setting(
        None, "--ramdisk", "another ramdisk (ari- ID or name), or none", metavar="ARI"
    )
    accel: str = setting(
        "auto",
        "--accel",
        "auto: KVM only where a probe guest runs under it, else TCG",
        choices=ACCELERATORS,
    )
    keep: bool = setting(False, "--keep", "keep the instance directory")
    open_network: bool = setting(
        False, "--open-network", "lift restrict=on: let the guest reach the host's network"
    )
    firmware: str | None = setting(
        None, "--firmware", "hvm: override the firmware", choices=("bios", "uefi")
    )
    disk_format: str | None = setting(
        None,
        "--format",
        "which of the image's disk formats to boot (default: raw first)",
        choices=format_names("boot"),
    )
    disk_bus: str = setting(
        "virtio",
        "--disk-bus",
        "how the root disk is attached (nvme: the cloud kernel's built-in driver)",
        choices=("virtio", "nvme", "ide", "scsi"),
    )
    ssh_timeout: float = setting(300.0, "--ssh-timeout", metavar="SECONDS", parse=float)
    layers: list[str] = setting(
        [],
        "--layer",
        "a qemu-runner layer applied over the machine profile (repeatable)",
        metavar="FILE.ini",
    )
    append: str | None = setting(
        None, "--append", "paravirtual: more kernel command line", metavar="ARGS"
    )
    # RunInstances' settings that shape the instance's metadata (InstanceMetadata fields)
    user_data: Path | None = metadata_setting(
        None, "--user-data", "user-data, served as is", metavar="FILE", parse=Path
    )
    tags: list[str] = metadata_setting([], "--tag", "instance tag (repeat)", metavar="KEY=VALUE")
    metadata_tags: bool = metadata_setting(
        False, "--metadata-tags", "serve the instance's tags under meta-data/tags/instance/"
    )
    iam_role: str | None = metadata_setting(
        None, "--iam-role", "instance profile role: iam/ credentials", metavar="NAME"
    )
    instance_type: str | None = metadata_setting(
        None, "--instance-type", "meta-data/instance-type", metavar="TYPE"
    )
    http_tokens: str | None = metadata_setting(
        None,
        "--http-tokens",
        "required: IMDSv2 only (token-less requests get 401)",
        choices=("optional", "required"),
    )
    http_endpoint: str | None = metadata_setting(
        None,
        "--http-endpoint",
        "disabled: every metadata request gets 403",
        choices=("enabled", "disabled"),
    )
    hop_limit: int | None = metadata_setting(
        None,
        "--hop-limit",
        "IP TTL of IMDSv2 token responses, 1-64 (enforced by `imds serve`; slirp has none)",
        metavar="N",
        parse=int,
    )
    # LaunchOptions.metadata: the settings above, checked against EC2's limits when the
    # request is made, so a bad one is refused before anything is looked up or started
    metadata: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.metadata = self.instance_metadata()

    def instance_metadata(self) -> dict[str, Any]:
        """InstanceMetadata fields from the settings; only what was given, so the AMI's and
        `InstanceMetadata`'s defaults stay in charge of the rest."""
        out: dict[str, Any] = {}
        if self.user_data is not None:
            out["user_data"] = read_user_data(Path(self.user_data))
        if self.tags:
            tags = dict(parse_tag(t) for t in self.tags)
            if len(tags) > MAX_TAGS:
                raise BadInput(f"--tag: {len(tags)} tags; EC2 allows {MAX_TAGS} per instance")
            out["tags"] = tags
        if self.metadata_tags:
            for key in out.get("tags", {}):
                if not _METADATA_TAG_KEY.fullmatch(key) or key in (".", "..", "_index"):
                    raise BadInput(
                        f"--tag {key!r}: with --metadata-tags a key may hold only letters, "
                        "digits and + - = . , _ : @ (it becomes a metadata path)"
                    )
            out["instance_metadata_tags"] = True
        if self.iam_role is not None:
            if not _ROLE.fullmatch(self.iam_role):
                raise BadInput(f"--iam-role {self.iam_role!r}: not an IAM role name")
            out["iam_role"] = self.iam_role
        if self.instance_type is not None:
            if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9-]+", self.instance_type):
                raise BadInput(f"--instance-type {self.instance_type!r}: expected e.g. m1.small")
            out["instance_type"] = self.instance_type
        if self.http_tokens is not None:
            out["http_tokens"] = self.http_tokens
        if self.http_endpoint is not None:
            out["http_endpoint"] = self.http_endpoint
        if self.hop_limit is not None:
            if not 1 <= self.hop_limit <= 64:
                raise BadInput(f"--hop-limit {self.hop_limit}: must be 1-64")
            out["http_put_response_hop_limit"] = self.hop_limit
        return out

    def plan(self, image: ImageRecord, kernel: str | None) -> LaunchPlan:
        from harness.launch.plan import make_plan
        from harness.launch.types import check_image, instance_type

        if self.instance_type is not None and image.image_type == "machine":
            # RunInstances' refusal, before anything is prepared; the kernel is not checked
            # (EC2 never did: a kernel of another architecture is the smoke test's to find)
            check_image(instance_type(self.instance_type), image.architecture,
                        image.virtualization_type or "hvm")  # fmt: skip
        return make_plan(
            image,
            kernel_ref=kernel,
            ramdisk_ref=self.ramdisk,
            firmware=self.firmware,
            disk_format=self.disk_format,
            disk_bus=self.disk_bus,
            append=self.append,
        )

    def options(
        self, chosen: Accelerator, say: Callable[[str], None], interactive: bool = False
    ) -> LaunchOptions:
        from harness.launch.steps import LaunchOptions
        from harness.launch.types import DEFAULT_TYPE, TYPES

        # the instance type's vCPUs, as run-instances gives them (m1.small: one); a type
        # the table does not know keeps the base layer's. Memory stays the base layer's:
        # a smoke test's guest needs no more, and the matrix budgets guests by it
        itype = TYPES.get(self.instance_type or DEFAULT_TYPE)
        return LaunchOptions(
            smp=itype.qemu_smp() if itype else None,
            accelerator=chosen,
            keep=self.keep,
            open_network=self.open_network,
            ssh_timeout=self.ssh_timeout,
            extra_layers=[str(Path(x).resolve()) for x in self.layers],
            metadata=dict(self.metadata),
            interactive=interactive,
            say=say,
        )


def launch_settings(cls: type[LaunchRequest] = LaunchRequest) -> list[tuple[str, Flag, Any]]:
    """The declared settings of a request class in declaration order: name, flag, default."""
    out = []
    for f in dataclasses.fields(cls):
        if "flag" in f.metadata:
            default = f.default if f.default_factory is MISSING else f.default_factory()
            out.append((f.name, f.metadata["flag"], default))
    return out


def read_user_data(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInput(f"--user-data {path}: {e.strerror}") from None
    if len(data) > USER_DATA_MAX:
        raise BadInput(f"--user-data {path}: {len(data)} bytes; EC2 takes at most 16 KB")
    return data


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BadInput(f"--tag {text!r}: expected KEY=VALUE")
    if len(key) > 128 or len(value) > 256:
        raise BadInput(f"--tag {key[:40]!r}: keys are at most 128 and values 256 characters")
    if key.lower().startswith("aws:"):
        raise BadInput(f"--tag {key!r}: the aws: prefix is reserved")
    return key, value


def progress_printer() -> Callable[[str], None]:
    """The `say` of a launch run from a terminal: dim `amilab:` lines on stderr."""
    from rich.console import Console

    err = Console(stderr=True)

    def say(text: str) -> None:
        err.print(f"[dim]amilab:[/] {text}", highlight=False, soft_wrap=True)

    return say
