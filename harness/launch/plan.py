"""From an AMI record (and --kernel/--ramdisk overrides) to what one launch boots.

Paravirtual images boot their AKI directly with their ARI and a kernel command line that
names the root by label (or UUID); HVM images boot their own bootloader from firmware. The
AMI's ramdisk carries drivers for the AMI's kernel only, so booting another kernel without
naming a ramdisk takes the registered ramdisk of the same kind built for that kernel, as
the EC2 user would have had to pick the matching ARI; when there is none and the image's own
is amilab's generated ramdisk, one is generated for that kernel and registered as its ARI.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from builder.disk.formats import FORMATS, format_names
from builder.errors import BadInput
from builder.ids import file_sha256
from builder.images import factory
from builder.images.kernel_refs import find_kernel
from builder.images.records import RamdiskSettings
from builder.images.registry import ImageRecord, Registry, store_artifact
from builder.state import workarea
from harness.launch import pvgrub
from harness.launch.machine import Disk

# Always on the command line: a panic ends QEMU at once (with -no-reboot) instead of hanging.
# tsc=reliable: under TCG with 2+ vCPUs the kernel's TSC sync check fails ("TSCs
# unsynchronized"), so it falls back to the HPET, whose every read (each clock_gettime:
# the vDSO cannot read the HPET) is emulated MMIO; measured on m1.large (2 vCPUs), QEMU CPU
# seconds to SSH went from 30.1-30.3 to 25.1-25.3. TCG's TSC is the host's clock, the same
# for every vCPU; the guest's other clocksources stay available.
#
# cryptomgr.notests: the kernel's crypto self-tests (crypto_algapi_init, crypto_kdf108_init)
# took ~0.9 s of a TCG boot's initcalls (initcall_debug); they test the crypto code, which a
# smoke does not claim to. rcupdate.rcu_expedited=1: boot-time synchronize_rcu() calls end
# at once instead of waiting out a grace period of an emulated clock. Both are in Kata
# Containers' default kernel arguments; measured: the kernel phase of debian-pv from
# 1.85/1.18/2.06 to 1.28/1.10/1.09 s of QEMU CPU (interleaved, bench/boot.py's phases).
HARNESS_CMDLINE = "panic=-1 tsc=reliable cryptomgr.notests rcupdate.rcu_expedited=1"
# no_timer_check (x86 only): at boot the kernel checks that the IO-APIC delivers timer ticks
# within a short window and panics ("IO-APIC + timer doesn't work!") when they come late,
# which a TCG guest on a loaded host can hit (seen once here, load ~3). Linux skips the
# check by itself under KVM; amilab's TCG guests need it said.
X86_CMDLINE = "no_timer_check"
FORMAT_PREFERENCE = format_names("boot")  # the table's order: raw first
GENERATED = "generated"  # the ramdisk kind amilab makes itself, for any kernel with modules


@dataclass
class LaunchPlan:
    image: ImageRecord
    profile: str  # paravirtual | hvm-bios | hvm-uefi
    disk: Disk
    kernel: ImageRecord | None = None
    ramdisk: ImageRecord | None = None
    cmdline: str = ""
    expected_release: str = ""
    notes: list[str] = field(default_factory=list)
    pv_grub: bool = False  # kernel and initrd come from the image's menu at launch
    imported: bool = False  # boots a prepared copy-on-write overlay (VM Import's fixes)
    kernel_path: Path | None = None  # what -kernel/-initrd load when not the records' files
    ramdisk_path: Path | None = None

    @property
    def machine_architecture(self) -> str:
        """The machine that runs the launch: the kernel's for a paravirtual one (QEMU enters
        the AKI itself, whatever the image's tree is), the image's for hvm."""
        if self.kernel is not None and not self.pv_grub:
            return self.kernel.architecture or "x86_64"
        return self.image.architecture or "x86_64"

    @property
    def virtualization(self) -> str:
        return "paravirtual" if self.profile == "paravirtual" else "hvm"

    @property
    def kernel_id(self) -> str | None:
        return self.kernel.image_id if self.kernel else None

    @property
    def ramdisk_id(self) -> str | None:
        return self.ramdisk.image_id if self.ramdisk else None


def sniff_format(path: Path) -> str:
    """The disk format from its first bytes (qcow2/vmdk magic), raw otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise BadInput(f"{path}: cannot read the disk: {e.strerror}") from None
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    return "raw"


def choose_disk(image: ImageRecord, fmt: str | None = None, bus: str = "virtio") -> Disk:
    locations = image.locations
    if fmt is not None:
        if fmt not in locations:
            have = ", ".join(sorted(locations)) or "none"
            raise BadInput(f"{image.image_id} has no {fmt} disk (formats: {have})")
        chosen = [(fmt, locations[fmt])]
    else:
        chosen = [(f, locations[f]) for f in FORMAT_PREFERENCE if f in locations]
    if not chosen:  # an image registered without locations: its one disk, format sniffed
        path = Path(image.image_location)
        chosen = [(sniff_format(path), str(path))]
    name, location = chosen[0]
    path = Path(location)
    if not path.exists():
        raise BadInput(f"{image.image_id}: disk {path} is missing")
    return Disk(path, FORMATS[name].qemu_format if name in FORMATS else name, bus)


def root_argument(image: ImageRecord) -> str:
    """For a ramdisk, which resolves labels and UUIDs as cloud images expect."""
    if label := image.launch.root_label:
        return f"root=LABEL={label}"
    if uuid := image.launch.root_uuid:
        return f"root=UUID={uuid}"
    return "root=/dev/vda"


# Without a ramdisk the kernel itself finds the root: it knows device names and PARTUUID=,
# not labels, and it must wait for the (built-in) disk driver to probe.
_WHOLE_DISK = {"virtio": "/dev/vda", "nvme": "/dev/nvme0n1", "ide": "/dev/sda", "scsi": "/dev/sda"}
_FIRST_PARTITION = {"virtio": "/dev/vda1", "nvme": "/dev/nvme0n1p1", "ide": "/dev/sda1",
                    "scsi": "/dev/sda1"}  # fmt: skip


def kernel_root_argument(image: ImageRecord, bus: str) -> str:
    if partuuid := image.launch.root_partuuid:
        return f"root=PARTUUID={partuuid} rootwait"
    if image.launch.partitioning in ("mbr", "gpt"):
        return f"root={_FIRST_PARTITION[bus]} rootwait"
    return f"root={_WHOLE_DISK[bus]} rootwait"


def _ramdisk_for_kernel(
    registry: Registry, kernel: ImageRecord, like: ImageRecord | None
) -> ImageRecord | None:
    kind = like.ramdisk_settings.kind if like else None
    matches = [
        r
        for r in registry.list("ramdisk")
        if r.ramdisk_settings.built_for == kernel.image_id
        and (kind is None or r.ramdisk_settings.kind == kind)
    ]
    return matches[-1] if matches else None


def generated_ramdisk(kernel: ImageRecord, registry: Registry) -> ImageRecord:
    """The generated ramdisk for another kernel, registered as its own ARI. Building it from
    the same kernel gives the same bytes, so the ARI is made once and then found again."""
    from builder.build.kernel import kernel_for_record
    from builder.build.ramdisk import build_generated

    resolved = kernel_for_record(kernel)
    # beside the artifacts (the file is moved there), named for its owner (a kill leaves it)
    work = workarea.root()
    with tempfile.TemporaryDirectory(dir=work, prefix=f"ramdisk@{workarea.owner_tag()}.") as tmp:
        built = build_generated(resolved, Path(tmp) / "initrd")
        digest = file_sha256(built)
        record = factory.content_image(
            digest,
            f"initrd-{resolved.release}-{GENERATED}",
            "",
            RamdiskSettings(kind=GENERATED, built_for=kernel.image_id),
            release=resolved.release,
            description=f"{GENERATED} ramdisk for {resolved.release}",
            architecture=resolved.architecture,
        )
        if existing := registry.get(record.image_id):
            return existing
        record.image_location = str(store_artifact(built, digest, ".initrd"))
    return registry.register([record])[0]


def make_plan(
    image: ImageRecord,
    kernel_ref: str | None = None,
    ramdisk_ref: str | None = None,
    firmware: str | None = None,
    disk_format: str | None = None,
    disk_bus: str = "virtio",
    registry: Registry | None = None,
    append: str | None = None,
) -> LaunchPlan:
    registry = registry or Registry()
    if image.image_type != "machine":
        raise BadInput(f"{image.image_id} is a {image.image_type} image, not a machine image")
    disk = choose_disk(image, disk_format, disk_bus)
    if kernel_ref and (kernel_ref in pvgrub.ALIASES or pvgrub.is_pv_grub(registry.get(kernel_ref))):
        if ramdisk_ref:
            raise BadInput("--ramdisk does not apply to pv-grub: it loads what the menu names")
        aki = pvgrub.register(registry)
        return LaunchPlan(
            image,
            "paravirtual",
            disk,
            kernel=aki,
            cmdline=append or "",
            pv_grub=True,
            notes=[f"PV-GRUB {aki.image_id} boots the kernel the image's GRUB menu names"],
        )
    if image.virtualization_type == "hvm":
        if kernel_ref or ramdisk_ref or append:
            raise BadInput(
                "--kernel/--ramdisk/--append apply to paravirtual images; this one is hvm"
            )
        boot = firmware or image.launch.firmware
        if boot not in ("bios", "uefi"):
            raise BadInput(f"--firmware {boot}: expected bios or uefi")
        if image.architecture == "arm64" and boot != "uefi":
            raise BadInput(f"--firmware {boot}: an arm64 image boots on UEFI only")
        return LaunchPlan(
            image,
            f"hvm-{boot}",
            disk,
            expected_release=image.launch.expected_release,
            imported=image.launch.imported,
        )

    notes: list[str] = []
    kernel_ref = kernel_ref or image.kernel_id
    if not kernel_ref:
        raise BadInput(f"{image.image_id} is paravirtual but names no kernel: use --kernel AKI")
    kernel = find_kernel(kernel_ref, registry)  # a catalogue name: fetched on first use
    own_ramdisk = registry.get(image.ramdisk_id) if image.ramdisk_id else None
    ramdisk: ImageRecord | None
    if ramdisk_ref == "none":
        ramdisk = None
    elif ramdisk_ref:
        ramdisk = registry.find(ramdisk_ref, "ramdisk")
    elif kernel.image_id != image.kernel_id and own_ramdisk is not None:
        ramdisk = _ramdisk_for_kernel(registry, kernel, own_ramdisk)
        why_not = ""
        if ramdisk is None and own_ramdisk.ramdisk_settings.kind == GENERATED:
            try:
                ramdisk = generated_ramdisk(kernel, registry)
            except BadInput as e:  # no modules to make one from (an AKI of a bundle, say)
                why_not = f" (none could be generated: {e})"
            else:
                notes.append(
                    f"ramdisk {ramdisk.image_id} was generated for {kernel.image_id} "
                    f"({kernel.kernel_release})"
                )
        elif ramdisk is not None:
            notes.append(f"ramdisk {ramdisk.image_id} is the one built for {kernel.image_id}")
        if ramdisk is None:
            ramdisk = own_ramdisk
            notes.append(
                f"no ramdisk is registered for {kernel.image_id}{why_not}; booting the image's "
                f"own {own_ramdisk.image_id}, built for {own_ramdisk.kernel_release}"
            )
    else:
        ramdisk = own_ramdisk
    root = root_argument(image) if ramdisk else kernel_root_argument(image, disk.bus)
    parts = [root, kernel.kernel_settings.cmdline or "console=ttyS0"]
    parts += [image.launch.kernel_cmdline, HARNESS_CMDLINE]
    if (kernel.architecture or "x86_64") in ("x86_64", "i386"):
        parts.append(X86_CMDLINE)
    parts.append(append or "")
    cmdline = " ".join(p for p in parts if p)
    return LaunchPlan(
        image,
        "paravirtual",
        disk,
        kernel=kernel,
        ramdisk=ramdisk,
        cmdline=cmdline,
        expected_release=kernel.kernel_release or "",
        notes=notes,
    )
