"""EC2 instance types: what each gives a guest and what it refuses.

A type decides the guest's vCPUs and memory, its instance-store disks, which architectures
and virtualization types it runs (RunInstances refuses the rest with EC2's error code), and
how disks appear: on Nitro types EBS and instance-store volumes are NVMe devices, on the
Xen types they are not (virtio here, standing in for Xen's blkfront), so an image whose
ramdisk lacks the NVMe driver is found out before EC2 finds it out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from builder.errors import BadInput

GIB = 1 << 30
MAX_MEMORY_MIB = 4096  # a TCG guest does not need more to boot; the host is shared


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_mib: int
    instance_store_gib: tuple[int, ...] = ()
    architectures: tuple[str, ...] = ("x86_64",)
    virtualization: tuple[str, ...] = ("hvm",)
    nitro: bool = False

    @property
    def disk_bus(self) -> str:
        return "nvme" if self.nitro else "virtio"

    @property
    def hypervisor(self) -> str:
        return "nitro" if self.nitro else "xen"

    def qemu_smp(self) -> int:
        return max(1, min(self.vcpus, os.cpu_count() or 1))

    def qemu_memory(self) -> int:
        return min(self.memory_mib, MAX_MEMORY_MIB)


_BOTH = ("i386", "x86_64")
_PV_HVM = ("paravirtual", "hvm")
TYPES: dict[str, InstanceType] = {
    t.name: t
    for t in (
        # the 2006-2008 families: paravirtual under Xen, instance store included
        InstanceType("m1.small", 1, 1740, (160,), _BOTH, _PV_HVM),
        InstanceType("m1.medium", 1, 3840, (410,), _BOTH, _PV_HVM),
        InstanceType("m1.large", 2, 7680, (420, 420), ("x86_64",), _PV_HVM),
        InstanceType("m1.xlarge", 4, 15360, (420, 420, 420, 420), ("x86_64",), _PV_HVM),
        InstanceType("c1.medium", 2, 1740, (350,), _BOTH, _PV_HVM),
        InstanceType("m3.medium", 1, 3840, (4,), ("x86_64",), _PV_HVM),
        InstanceType("t1.micro", 1, 613, (), _BOTH, ("paravirtual",)),
        # Xen, HVM only, EBS only
        InstanceType("t2.micro", 1, 1024, (), _BOTH, ("hvm",)),
        InstanceType("t2.small", 1, 2048, (), _BOTH, ("hvm",)),
        # Nitro: NVMe disks
        InstanceType("t3.micro", 2, 1024, nitro=True),
        InstanceType("t3.small", 2, 2048, nitro=True),
        InstanceType("m5.large", 2, 8192, nitro=True),
        InstanceType("m5d.large", 2, 8192, (75,), nitro=True),
        InstanceType("c5.large", 2, 4096, nitro=True),
        InstanceType("c6i.large", 2, 4096, nitro=True),
        # Graviton (arm64): Nitro, UEFI, HVM only
        InstanceType("a1.medium", 1, 2048, architectures=("arm64",), nitro=True),
        InstanceType("t4g.micro", 2, 1024, architectures=("arm64",), nitro=True),
        InstanceType("m6g.medium", 1, 4096, architectures=("arm64",), nitro=True),
    )
}
DEFAULT_TYPE = "m1.small"


def default_type(architecture: str | None) -> str:
    """The type a launch that names none gets: m1.small (EC2's first, i386 and x86_64), or
    for arm64 images the smallest Graviton type."""
    return "t4g.micro" if architecture == "arm64" else DEFAULT_TYPE


def instance_type(name: str) -> InstanceType:
    if name not in TYPES:
        raise BadInput(
            f"InvalidParameterValue: Invalid value '{name}' for InstanceType "
            f"(known here: {', '.join(TYPES)})"
        )
    return TYPES[name]


def check_image(t: InstanceType, architecture: str, virtualization: str) -> None:
    """RunInstances' refusals for an image the type cannot run, in EC2's words."""
    if architecture not in t.architectures:
        raise BadInput(
            f"InvalidParameterValue: The architecture '{'/'.join(t.architectures)}' of the "
            f"specified instance type does not match the architecture '{architecture}' of the "
            "specified AMI. Specify an instance type and an AMI that have matching "
            "architectures, and try again."
        )
    if virtualization not in t.virtualization:
        if virtualization == "paravirtual":
            raise BadInput(
                "InvalidParameterCombination: Virtualization type 'hvm' is required for "
                f"instances of type '{t.name}'."
            )
        raise BadInput(
            "InvalidParameterCombination: Non-Windows instances with a virtualization type "
            f"of 'hvm' are currently not supported for the instance type '{t.name}'."
        )
