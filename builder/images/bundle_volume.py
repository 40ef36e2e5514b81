"""ec2-bundle-vol on the host: an instance's root volume as an instance-store bundle.

ec2-bundle-vol ran inside the instance and copied its live root filesystem into a fresh
image file, leaving out what must not travel with an AMI; here the same happens to the root
volume from outside, with no agent in the guest. The volume (a qcow2 over its snapshot) is
only read: `qemu-img convert` flattens it into a raw copy in a work directory, e2fsck replays
the copy's journal when the guest did not unmount it, and the excluded paths are removed from
the copy with debugfs after their data blocks are overwritten with zeros, so that a key left
out of the bundle is not in its free space either. The copy is then bundled exactly as
`amilab bundle` bundles an image (builder.images.bundle).

What is left out by default is what ec2-bundle-vol left out (ec2-ami-tools' FILE_FILTER and
its excluded directories): the files that may hold keys and certificates (`*.pem`, `*.priv`,
`*id_rsa*`, `*id_dsa*`, `*.gpg`, `*.jks`, `*/.ssh/authorized_keys`, plus today's
`*id_ecdsa*` and `*id_ed25519*`), shell history and editor leftovers, the contents of the
mount points `/dev`, `/media`, `/mnt`, `/proc`, `/sys` (where the seed's users copied their
certificate and key "outside the bundled tree"), and udev's persistent-net rules.
`no_filter` keeps the filtered files, as `--no-filter` did.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from builder.disk import e2fs, qemu_img
from builder.errors import BadInput, BuildFailed
from builder.images import bundle as bundle_mod
from builder.state import workarea

# ec2-ami-tools' EC2::Platform::Base::Constants::Security::FILE_FILTER, and two newer key types
FILE_FILTER = (
    "*/#*#", "*/.#*", "*.sw", "*.swo", "*.swp", "*~", "*.pem", "*.priv", "*id_rsa*",
    "*id_dsa*", "*id_ecdsa*", "*id_ed25519*", "*.gpg", "*.jks", "*/.ssh/authorized_keys",
    "*/.bash_history",
)  # fmt: skip
# kept as (empty) mount points, their contents left out
MOUNT_POINTS = ("/dev", "/media", "/mnt", "/proc", "/sys")
ALWAYS_EXCLUDED = (
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/udev/rules.d/z25_persistent-net.rules",
)


@dataclass
class Entry:
    path: str
    inode: int
    kind: str  # "dir" | "file" | "other"


@dataclass
class Selection:
    """What a bundle of the volume leaves out: whole subtrees, and mount points' contents."""

    excludes: list[str] = field(default_factory=list)
    no_filter: bool = False

    def __post_init__(self) -> None:
        clean = []
        for p in self.excludes:
            if not p.startswith("/") or "\n" in p:
                raise BadInput(f"--exclude {p!r}: give an absolute path inside the instance")
            clean.append(posixpath.normpath(p))
        self.excludes = clean

    def drops(self, entry: Entry) -> bool:
        p = entry.path
        if p in ALWAYS_EXCLUDED or any(p == x or p.startswith(x + "/") for x in self.excludes):
            return True
        if any(p.startswith(m + "/") for m in MOUNT_POINTS):
            return True
        return (
            not self.no_filter
            and entry.kind != "dir"
            and any(fnmatch.fnmatchcase(p, pat) for pat in FILE_FILTER)
        )


_LS = re.compile(r"^/(\d+)/(\d+)/\d+/\d+/(.*)/\d*/$")


def _walk(fs: e2fs.E2fs) -> list[Entry]:
    """Every entry of the filesystem, one debugfs run per directory depth (`ls -p` prints
    /inode/mode/uid/gid/name/size/ per entry)."""
    found: list[Entry] = []
    level = ["/"]
    while level:
        out = fs._debugfs([f"ls -p {e2fs._q(d)}" for d in level])
        # debugfs -f echoes each command before its output
        current, nxt = "", []
        for line in out.splitlines():
            if line.startswith("debugfs: ls -p "):
                current = line[len('debugfs: ls -p "') : -1]
                continue
            m = _LS.match(line)
            if not m or m.group(3) in (".", ".."):
                continue
            mode = int(m.group(2), 8)
            kind = "dir" if mode & 0o170000 == 0o040000 else (
                "file" if mode & 0o170000 == 0o100000 else "other")  # fmt: skip
            entry = Entry(posixpath.join(current, m.group(3)), int(m.group(1)), kind)
            found.append(entry)
            if kind == "dir":
                nxt.append(entry.path)
        level = nxt
    return found


def _block_size(fs: e2fs.E2fs) -> int:
    r = subprocess.run(["dumpe2fs", "-h", fs.spec], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("Block size:"):
            return int(line.split(":", 1)[1])
    raise BuildFailed(f"dumpe2fs {fs.spec}: no block size")


def _zero_data(fs: e2fs.E2fs, raw: Path, offset: int, files: list[Entry]) -> int:
    """Overwrite the data blocks of these files with zeros (in the copy); returns how many."""
    if not files:
        return 0
    out = fs._debugfs([f"blocks <{f.inode}>" for f in files])
    blocks = {int(b) for line in out.splitlines() if not line.startswith("debugfs:")
              for b in line.split() if b.isdigit()}  # fmt: skip
    size = _block_size(fs)
    zero = bytes(size)
    with open(raw, "r+b") as f:
        for b in sorted(blocks):
            f.seek(offset + b * size)
            f.write(zero)
    return len(blocks)


def _recover(raw: Path, offset: int) -> None:
    """Replay the journal of a filesystem its guest did not unmount (the copy only)."""
    spec = f"{raw}?offset={offset}" if offset else str(raw)
    r = subprocess.run(["e2fsck", "-fy", spec], capture_output=True, text=True)
    if r.returncode >= 4:
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        raise BuildFailed(f"e2fsck on the volume's copy: {' / '.join(lines[-3:])}")


@dataclass
class Filtered:
    raw: Path
    removed: list[str]
    zeroed_blocks: int


def filtered_copy(volume: Path, fmt: str, offset: int, work: Path, sel: Selection) -> Filtered:
    """A raw copy of the volume with the selection's paths removed; the volume is only read."""
    raw = work / "volume.raw"
    # -U: a running instance's QEMU may hold the volume (bundle-vol --no-reboot)
    qemu_img.convert(volume, raw, src_format=fmt, out_format="raw", force_share=True)
    _recover(raw, offset)
    fs = e2fs.open_fs(raw, offset)
    if fs is None:
        raise BadInput(f"{volume}: its root filesystem is not ext2/3/4 that e2fsprogs can write")
    entries = _walk(fs)
    dropped = [e for e in entries if sel.drops(e)]
    # a dropped directory takes its subtree; keep the topmost entries, delete bottom-up
    dirs = [d.path + "/" for d in dropped if d.kind == "dir"]
    tops = [e for e in dropped if not any(e.path.startswith(d) for d in dirs)]

    def under(e: Entry) -> bool:
        return any(e.path == t.path or e.path.startswith(t.path + "/") for t in tops)

    doomed = [e for e in entries if under(e)]
    zeroed = _zero_data(fs, raw, offset, [e for e in doomed if e.kind == "file"])
    commands = []
    for e in sorted(doomed, key=lambda e: e.path.count("/"), reverse=True):
        commands.append(f"{'rmdir' if e.kind == 'dir' else 'rm'} {e2fs._q(e.path)}")
    fs.run(commands)  # e2fsck -fn checks the result
    return Filtered(raw, [t.path for t in tops], zeroed)


def bundle_volume(
    volume: Path,
    fmt: str,
    fs_offset: int,
    dest: Path,
    prefix: str,
    sel: Selection,
    *,
    user: str,
    architecture: str,
    user_cert: Path,
    private_key: Path,
    ec2_cert: Path,
    kernel_id: str | None,
    ramdisk_id: str | None,
    root_device: str,
) -> tuple[bundle_mod.BundleResult, list[str]]:
    """The bundle of the volume's filtered copy in DEST, and the paths left out."""
    work = workarea.new_dir("bundle-vol")
    try:
        f = filtered_copy(volume, fmt, fs_offset, work, sel)
        result = bundle_mod.bundle_file(
            f.raw, dest, prefix, user=user, image_type="machine", architecture=architecture,
            user_cert=user_cert, private_key=private_key, ec2_cert=ec2_cert,
            kernel_id=kernel_id, ramdisk_id=ramdisk_id,
            block_device_mapping={"ami": root_device.removeprefix("/dev/"), "root": root_device},
        )  # fmt: skip
        return result, f.removed
    finally:
        shutil.rmtree(work, ignore_errors=True)
