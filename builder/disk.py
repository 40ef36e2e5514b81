"""Root disk: a sparse raw image with an ext4 root made by `mkfs.ext4 -d` (no mount needed).

Unpartitioned (EC2 paravirtual style: the filesystem is the whole disk) or with one root
partition in an MBR or GPT table written by sfdisk; in that case mkfs writes the filesystem
straight at the partition's offset (`-E offset=`), so nothing is copied and nothing mounted.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildFailed

_ALIGN = 1 << 20  # first partition at 1 MiB, as every partitioning tool aligns it
_GPT_TAIL = 33 * 512  # backup GPT header and entries at the end of the disk
ROOT_PART_TYPE = {
    "gpt": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # Linux root (x86-64), discoverable
    "mbr": "83",
}


@dataclass(frozen=True)
class DiskLayout:
    size: int
    label: str
    uuid: str
    partitioning: str
    fs_offset: int
    fs_size: int
    partuuid: str | None

    @property
    def root_device_name(self) -> str:
        # EC2's names: PV AMIs mounted an unpartitioned root as /dev/sda1; HVM used /dev/xvda
        return "/dev/sda1" if self.partitioning == "none" else "/dev/xvda"

    def extra(self) -> dict[str, object]:
        return {
            "root_label": self.label,
            "root_uuid": self.uuid,
            "partitioning": self.partitioning,
            "fs_offset": self.fs_offset,
            "root_partuuid": self.partuuid,
            "disk_size": self.size,
        }


def write_fstab(root: Path, label: str) -> None:
    fstab = root / "etc/fstab"
    fstab.write_text(
        "# written by amilab: the root filesystem is found by its label, as cloud images do\n"
        f"LABEL={label}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n"
    )


def _run(argv: list[str], log: Path, stdin: str | None = None, env: dict | None = None) -> str:
    with open(log, "ab") as out:
        out.write(("# " + " ".join(argv) + "\n").encode())
    result = subprocess.run(
        argv,
        input=stdin.encode() if stdin is not None else None,
        capture_output=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    with open(log, "ab") as out:
        out.write(result.stdout + result.stderr)
    if result.returncode != 0:
        err = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        raise BuildFailed(f"{argv[0]} failed: {err[-1] if err else result.returncode}")
    return result.stdout.decode(errors="replace")


def _partition(out: Path, size: int, scheme: str, log: Path) -> tuple[int, int, str]:
    """Write the table; (offset, size, PARTUUID) of the root partition."""
    label = "gpt" if scheme == "gpt" else "dos"
    script = f"label: {label}\nstart=2048, type={ROOT_PART_TYPE[scheme]}"
    script += ", name=root\n" if scheme == "gpt" else ", bootable\n"
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)], log, stdin=script)
    table = json.loads(_run(["sfdisk", "--json", str(out)], log))["partitiontable"]
    part = table["partitions"][0]
    sector = int(table.get("sectorsize", 512))
    offset, length = part["start"] * sector, part["size"] * sector
    if scheme == "gpt":
        length = min(length, size - _GPT_TAIL - offset)
        partuuid = part["uuid"].lower()
    else:
        partuuid = f"{table['id'].removeprefix('0x')}-01"
    return offset, length, partuuid


def make_disk(
    root: Path, out: Path, size: int, label: str, uuid: str, partitioning: str, log: Path
) -> DiskLayout:
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(size)
    offset, fs_size, partuuid = 0, size, None
    if partitioning != "none":
        offset, fs_size, partuuid = _partition(out, size, partitioning, log)
    fs_size -= fs_size % 4096
    argv = [
        "mkfs.ext4",
        "-F",
        "-q",
        "-b",
        "4096",
        "-L",
        label,
        "-U",
        uuid,
        "-E",
        f"hash_seed={uuid},offset={offset}" if offset else f"hash_seed={uuid}",
        "-d",
        str(root),
        str(out),
        f"{fs_size // 1024}k",
    ]
    _run(argv, log)
    return DiskLayout(size, label, uuid, partitioning, offset, fs_size, partuuid)
