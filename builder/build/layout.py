"""Root disk: a sparse raw image with an ext4 root made by `mkfs.ext4 -d` (no mount needed).

Unpartitioned (EC2 paravirtual style: the filesystem is the whole disk) or with one root
partition in an MBR or GPT table written by sfdisk; in that case mkfs writes the filesystem
straight at the partition's offset (`-E offset=`), so nothing is copied and nothing mounted.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid as uuid_mod
from dataclasses import dataclass
from pathlib import Path

from builder.build import reproducible
from builder.children import ending_with_us
from builder.errors import BuildFailed

_GPT_TAIL = 33 * 512  # backup GPT header and entries at the end of the disk
_MIB = 1 << 20
# (role, GPT type, MBR type, size); the root partition takes the rest of the disk
_PARTS = {
    "bios": ("21686148-6449-6E6F-744E-656564454649", None, _MIB),  # GRUB's BIOS boot partition
    "esp": ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ef", 100 * _MIB),
    "root": ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "83", None),  # discoverable x86-64 root
}


def plan(partitioning: str, boot: str | None) -> list[str]:
    """Partition roles in disk order. BIOS GRUB lives in a BIOS boot partition on GPT and in
    the gap after the MBR on MBR disks; UEFI needs an EFI system partition."""
    if partitioning == "none":
        return []
    roles = []
    if boot in ("bios", "hybrid") and partitioning == "gpt":
        roles.append("bios")
    if boot in ("uefi", "hybrid"):
        roles.append("esp")
    return roles + ["root"]


@dataclass(frozen=True)
class DiskLayout:
    size: int
    label: str
    uuid: str
    partitioning: str
    fs_offset: int
    fs_size: int
    partuuid: str | None
    parts: dict[str, tuple[int, int]]  # role -> (offset, size) in bytes
    boot: str | None = None

    @property
    def root_device_name(self) -> str:
        # EC2's names: PV AMIs mounted an unpartitioned root as /dev/sda1; HVM used /dev/xvda
        return "/dev/sda1" if self.partitioning == "none" else "/dev/xvda"


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
        ending_with_us(argv),
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


def table_ids(seed: str, roles: list[str]) -> tuple[str, dict[str, str]]:
    """The disk's label-id and each partition's GUID, derived from `seed` (the root
    filesystem's UUID, itself from the recipe) instead of sfdisk's random ones."""
    disk = uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"amilab:disk:{seed}")
    parts = {r: str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"amilab:{r}:{seed}")) for r in roles}
    return str(disk), parts


def _partition(
    out: Path, size: int, scheme: str, roles: list[str], log: Path, seed: str
) -> tuple[dict[str, tuple[int, int]], str]:
    """Write the table; ({role: (offset, size)}, PARTUUID of the root partition)."""
    disk_id, part_ids = table_ids(seed, roles)
    if scheme == "gpt":
        lines = ["label: gpt", f"label-id: {disk_id.upper()}"]
    else:
        lines = ["label: dos", f"label-id: 0x{disk_id[:8]}"]
    for role in roles:
        gpt_type, mbr_type, part_size = _PARTS[role]
        spec = "type=" + (gpt_type if scheme == "gpt" else str(mbr_type))
        if part_size:
            spec += f", size={part_size // 512}"
        if scheme == "gpt":
            spec += f", name={role}, uuid={part_ids[role].upper()}"
        elif role == "root":
            spec += ", bootable"
        lines.append(spec)
    lines[2] = "start=2048, " + lines[2]
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)], log, "\n".join(lines))
    table = json.loads(_run(["sfdisk", "--json", str(out)], log))["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    parts: dict[str, tuple[int, int]] = {}
    for role, part in zip(roles, table["partitions"], strict=True):
        parts[role] = (part["start"] * sector, part["size"] * sector)
    offset, length = parts["root"]
    root_index = roles.index("root") + 1
    if scheme == "gpt":
        parts["root"] = (offset, min(length, size - _GPT_TAIL - offset))
        partuuid = table["partitions"][root_index - 1]["uuid"].lower()
    else:
        partuuid = f"{table['id'].removeprefix('0x')}-{root_index:02d}"
    return parts, partuuid


def make_disk(
    root: Path,
    out: Path,
    size: int,
    label: str,
    uuid: str,
    partitioning: str,
    log: Path,
    boot: str | None = None,
    epoch: int = 0,
) -> DiskLayout:
    """The disk with the tree in it; every time in the filesystem is `epoch` or a clamped
    file time (builder.build.reproducible), every identifier derives from `uuid`."""
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(size)
    parts: dict[str, tuple[int, int]] = {}
    offset, fs_size, partuuid = 0, size, None
    if partitioning != "none":
        roles = plan(partitioning, boot)
        parts, partuuid = _partition(out, size, partitioning, roles, log, uuid)
        offset, fs_size = parts["root"]
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
    _run(argv, log, env=reproducible.fake_time_env(epoch))
    reproducible.set_inode_ctimes(f"{out}?offset={offset}" if offset else str(out), epoch, log)
    return DiskLayout(size, label, uuid, partitioning, offset, fs_size, partuuid, parts, boot)
