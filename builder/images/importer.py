"""`amilab import`: a VMware disk (VMDK, OVA, OVF) → a registered HVM AMI.

Import validates and converts the disk to raw with amilab's own reader, inspects it
(libguestfs, read-only), and registers it. What VM Import does to the disk before its first
boot happens at launch time, in a copy-on-write overlay: harness/launch/overlay.py.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from builder import paths
from builder.disk.convert import convert
from builder.disk.inspection import inspect_guest, open_guestfs
from builder.errors import BadInput
from builder.ids import sparse_sha256
from builder.images import factory
from builder.images.records import LaunchSettings, partitioning_of
from builder.images.registry import ImageRecord, Registry, store_artifact

ROOT_DEVICE = "/dev/xvda"


class UnbootableImage(BadInput):
    """The disk cannot boot here; the message says why (e.g. no virtio driver)."""


# --- import ------------------------------------------------------------------------------


def import_disk(
    src: Path, name: str | None = None, quiet: bool = False, work_dir: Path | None = None
) -> ImageRecord:
    """`work_dir`: where the converted disk is made (default: the work root); a caller that
    may have to drop an import halfway (the API server stopping) gives its own."""
    if not src.exists():
        raise BadInput(f"{src}: no such file")
    parent = work_dir or paths.work_root()
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=parent))
    try:
        raw = work / "disk.raw"
        started = time.monotonic()
        converted = convert(src, raw, "raw")
        g = open_guestfs(raw, "raw")
        try:
            report = inspect_guest(g)
        finally:
            g.close()
        if report.get("os") is None:
            # EC2's image import fails such a disk too; nothing is stored or registered.
            raise BadInput(f"{src.name}: no operating system found (libguestfs inspection); "
                           "import takes a bootable disk")
        digest = sparse_sha256(raw)
        source = converted.source
        name = name or _default_name(src, source)
        launch = _launch(report, raw.stat().st_size)
        stored = store_artifact(raw, digest, ".raw")
        record = factory.machine_image(
            factory.Registration(name, "hvm", ROOT_DEVICE),
            digest,
            launch,
            {"raw": str(stored)},
            description=f"imported from {src.name}",
            extra=_extra(report, source, src, time.monotonic() - started),
            id_extra={"imported": True},
        )
        return Registry().register([record])[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _default_name(src: Path, source: dict[str, Any]) -> str:
    pkg = source.get("package") or {}
    base = pkg.get("name") or src.name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9()./_ -]", "-", base)[:128] or "imported"


def _launch(report: dict[str, Any], size: int) -> LaunchSettings:
    """What a launch needs, from the inspection: root, table, firmware, kernels found."""
    os_ = report.get("os") or {}
    boot = report["bootloader"]
    firmware = (
        "hybrid" if boot.get("mbr") and boot.get("efi") else ("uefi" if boot.get("efi") else "bios")
    )
    return LaunchSettings(
        disk_size=size,
        partitioning=partitioning_of(report["partitioning"]),
        root_label=os_.get("root_label"),
        root_uuid=os_.get("root_uuid"),
        boot=firmware,
        kernel_releases=[k["release"] for k in report["kernels"]],
        imported=True,
    )


def _extra(
    report: dict[str, Any], source: dict[str, Any], src: Path, seconds: float
) -> dict[str, Any]:
    """The inspection report and where the disk came from, for people and the overlay."""
    return {
        "source": {"file": str(src.resolve()), **source},
        "os": report.get("os") or {},
        "kernels": report["kernels"],
        "partitioning": report["partitioning"],
        "filesystems": report["filesystems"],
        "bootloader": report["bootloader"],
        "bootable": not report["problems"],
        "problems": report["problems"],
        "timings": {"import": round(seconds, 1)},
    }
