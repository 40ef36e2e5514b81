"""An image's files as the rest of the library needs them: the bytes behind a registered
image (a raw disk made once from a qcow2/vmdk-only AMI), scratch space beside the artifact
store, a bzImage's release string, and the launch settings read back from a disk.

Low in builder.images on purpose: lifecycle, store, volumes and modules all need these and
none of them may import another for it (that made import cycles).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from builder import paths
from builder.disk import qemu_img
from builder.disk.formats import qemu_format
from builder.errors import BadInput
from builder.ids import file_sha256
from builder.images.records import LaunchSettings, Partition
from builder.images.registry import ImageRecord, store_artifact
from builder.state import workarea


def image_file(rec: ImageRecord) -> Path:
    """The file that holds an image's bytes: the raw disk of an AMI (the one a bundle or
    stored object carries), the vmlinuz of an AKI, the initrd of an ARI."""
    if rec.image_type == "machine":
        locations = rec.locations
        raw = locations.get("raw")
        if raw and Path(raw).is_file():
            return Path(raw)
        for fmt, loc in locations.items():
            if Path(loc).is_file():
                return _raw_copy(Path(loc), fmt, rec)
        raise BadInput(f"{rec.image_id}: its disk is missing ({rec.image_location})")
    path = Path(rec.image_location)
    if not path.is_file():
        raise BadInput(f"{rec.image_id}: {path} is missing")
    return path


def _raw_copy(src: Path, fmt: str, rec: ImageRecord) -> Path:
    """A raw disk for an image registered only as qcow2/vmdk (cached beside the artifacts)."""
    digest = rec.digest or file_sha256(src)
    dest = paths.artifacts_dir() / digest[:2] / f"{digest}.raw"
    if dest.exists():
        return dest
    qemu_img.tool()
    work = work_dir("raw")
    try:
        tmp = work / "disk.raw"
        try:
            qemu_img.convert(src, tmp, src_format=qemu_format(fmt), out_format="raw")
        except qemu_img.QemuImgFailed as e:
            raise BadInput(f"{src}: qemu-img cannot read it: {e.detail}") from None
        return store_artifact(tmp, digest, ".raw")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def work_dir(what: str) -> Path:
    """Scratch space beside the artifacts, so results are renamed into place, not copied."""
    return workarea.new_dir(what)


def kernel_release_of(vmlinuz: Path) -> str | None:
    """The release string a bzImage carries (boot protocol: kernel_version at 0x20e)."""
    try:
        with open(vmlinuz, "rb") as f:
            head = f.read(0x210)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            offset = int.from_bytes(head[0x20E:0x210], "little") + 0x200
            f.seek(offset)
            text = f.read(256).split(b"\x00", 1)[0].decode(errors="replace")
    except OSError:
        return None
    return text.split(" ", 1)[0] or None


def probe_disk(disk: Path) -> LaunchSettings:
    """Launch settings read back from a disk (what the harness needs to boot it): its
    partition table and root filesystem's label and UUID, as the build had recorded them."""
    launch = LaunchSettings(disk_size=disk.stat().st_size, partitioning="none")
    table = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=False
    )
    if table.returncode == 0 and table.stdout.strip():
        pt = json.loads(table.stdout)["partitiontable"]
        sector = int(pt.get("sectorsize", 512))
        launch.partitioning = "gpt" if pt.get("label") == "gpt" else "mbr"
        roles: dict[str, Partition] = {}
        root: dict[str, Any] | None = None
        for p in pt.get("partitions", []):
            ptype = str(p.get("type", "")).upper()
            span = Partition(int(p["start"]) * sector, int(p["size"]) * sector)
            if ptype in ("21686148-6449-6E6F-744E-656564454649",):
                roles["bios"] = span
            elif ptype in ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EF"):
                roles["esp"] = span
            elif root is None or span.size > root["span"].size:
                root = {"span": span, "uuid": p.get("uuid")}
        if root is None:
            raise BadInput(f"{disk}: the partition table has no root partition")
        roles["root"] = root["span"]
        launch.partitions = roles
        launch.fs_offset = root["span"].offset
        launch.root_partuuid = (root.get("uuid") or "").lower() or None
        has_bios = "bios" in roles or launch.partitioning == "mbr"
        launch.boot = (
            "hybrid" if has_bios and "esp" in roles else "uefi" if "esp" in roles else "bios"
        )
    fs = subprocess.run(
        ["blkid", "-p", "-O", str(launch.fs_offset), "-o", "export", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    values = dict(line.split("=", 1) for line in fs.stdout.splitlines() if "=" in line)
    launch.root_label = values.get("LABEL")
    launch.root_uuid = values.get("UUID")
    return launch
