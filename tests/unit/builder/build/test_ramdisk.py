"""Generated ramdisk: module closure, cpio writer, reproducibility and the /init script's logic
(run with the host's busybox sh, functions only — AMILAB_RAMDISK_TEST stops it before main)."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import shutil
import stat
import subprocess
import time
from importlib import resources
from pathlib import Path

import pytest

from builder.build import ramdisk
from builder.build.kernel_tree import Kernel
from builder.build.ramdisk import Entry
from builder.errors import BadInput, BuildFailed

BUSYBOX = shutil.which("busybox") or "/bin/busybox"

DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/xen-blkfront.ko.zst:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/a.ko:
kernel/b.ko:
"""
BUILTIN = "kernel/drivers/nvme/host/nvme.ko\nkernel/drivers/scsi/sd_mod.ko\n"
ALIAS = """\
alias crc32c crc32c_generic
alias crc32c crc32c_intel
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
"""
SOFTDEP = "softdep ext4 pre: crc32c\nsoftdep a pre: b\nsoftdep b post: a\nsoftdep cifs gcm\n"


def index() -> ramdisk.ModuleIndex:
    return ramdisk.parse_index(DEP, BUILTIN, ALIAS, SOFTDEP)


def test_module_names() -> None:
    assert ramdisk.module_name("kernel/drivers/block/xen-blkfront.ko.zst") == "xen_blkfront"
    assert ramdisk.module_name("kernel/fs/ext4/ext4.ko") == "ext4"
    assert ramdisk.plain_path("kernel/x/virtio_blk.ko.xz") == "kernel/x/virtio_blk.ko"
    assert index().softdeps["cifs"] == (["gcm"], [])


def test_closure_puts_dependencies_first() -> None:
    order = ramdisk.load_order(index(), ["virtio_pci", "virtio_blk"])
    names = [ramdisk.module_name(p) for p in order]
    assert names == ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk"]


def test_closure_skips_builtins_and_accepts_dashes() -> None:
    order = ramdisk.load_order(index(), ["nvme", "sd_mod", "xen-blkfront", "xen_blkfront"])
    assert order == ["kernel/drivers/block/xen-blkfront.ko.zst"]


def test_closure_follows_softdeps_through_aliases() -> None:
    names = [ramdisk.module_name(p) for p in ramdisk.load_order(index(), ["ext4"])]
    assert names.index("crc32c_generic") < names.index("ext4")
    assert names.index("crc32c_intel") < names.index("ext4")
    assert names[-1] == "ext4" and {"crc16", "jbd2"} < set(names)


def test_closure_survives_softdep_cycles() -> None:
    order = ramdisk.load_order(index(), ["a"])
    assert sorted(order) == ["kernel/a.ko", "kernel/b.ko"]


def test_missing_module_is_bad_input() -> None:
    with pytest.raises(BadInput, match=r"kernel k: ramdisk_modules: 'ahci' is neither"):
        ramdisk.load_order(index(), ["virtio_blk", "ahci"], "kernel k: ")


def test_cpio_newc_is_listed_by_gnu_cpio(tmp_path: Path) -> None:
    entries = ramdisk.with_parents(
        [
            Entry("usr/bin/x", stat.S_IFREG | 0o755, b"hello"),
            Entry("bin/sh", stat.S_IFLNK | 0o777, b"/bin/busybox"),
            Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        ]
    )
    buf = io.BytesIO()
    ramdisk.write_cpio(entries, buf)
    assert len(buf.getvalue()) % 4 == 0
    res = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=buf.getvalue(), capture_output=True, check=True
    )
    lines = res.stdout.decode().splitlines()
    assert [line.split()[-1] for line in lines] == [
        "bin", "/bin/busybox", "dev", "dev/console", "usr", "usr/bin", "usr/bin/x"
    ]  # fmt: skip
    assert lines[3].startswith("crw-------") and "5," in lines[3]
    assert all(" root " in line and "1970" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# a whole ramdisk from a synthetic kernel (depmod faked: the fake modules are not ELF)


def fake_kernel(tmp_path: Path) -> Kernel:
    release = "6.1.0-99-test-amd64"
    mods = tmp_path / "lib/modules" / release
    for line in DEP.replace("\\\n", "").splitlines():
        rel = line.split(":")[0]
        path = mods / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        body = f"module {rel}".encode()
        if rel.endswith(".xz"):
            body = lzma.compress(body)
        elif rel.endswith(".zst"):
            body = subprocess.run(["zstd", "-c"], input=body, capture_output=True).stdout
        path.write_bytes(body)
    (mods / "modules.dep").write_text(DEP)
    (mods / "modules.builtin").write_text(BUILTIN)
    (mods / "modules.alias").write_text(ALIAS)
    (mods / "modules.softdep").write_text(SOFTDEP)
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(b"k")
    return Kernel(
        name="test",
        package=f"linux-image-{release}",
        version="1",
        release=release,
        vmlinuz=vmlinuz,
        modules_dir=mods,
        config=tmp_path / "config",
        digest="0" * 64,
        ramdisk_modules=("virtio_pci", "virtio_blk", "xen-blkfront", "nvme", "ext4"),
        cmdline="console=ttyS0",
    )


def unpack(image: Path, dest: Path) -> None:
    dest.mkdir()
    data = gzip.decompress(image.read_bytes())
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=data, cwd=dest, check=True
    )


@pytest.fixture
def no_depmod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ramdisk, "_depmod", lambda base, release: None)


@pytest.mark.usefixtures("no_depmod")
def test_generated_ramdisk_contents(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    image = ramdisk.build_generated(k, tmp_path / "out/ari.img")
    assert image == tmp_path / "out/ari.img"
    assert not list((tmp_path / "out").glob(".*"))
    root = tmp_path / "root"
    unpack(image, root)
    init = (root / "init").read_text()
    assert init.startswith("#!/bin/sh") and f"BUILT_FOR={k.release}" in init
    assert (root / "bin/busybox").stat().st_mode & 0o111
    assert (root / "sbin/switch_root").is_symlink() and (root / "bin/sh").is_symlink()
    mods = root / "lib/modules" / k.release
    # compressed modules are stored plain, since busybox insmod cannot decompress them
    assert (mods / "kernel/drivers/block/virtio_blk.ko").read_bytes().startswith(b"module ")
    assert (mods / "kernel/drivers/block/xen-blkfront.ko").read_bytes().startswith(b"module ")
    listed = (root / ramdisk.MODULES_LIST).read_text().split()
    assert listed[-1] == "kernel/fs/ext4/ext4.ko"
    assert all(not p.endswith((".xz", ".zst")) for p in listed)
    assert not (mods / "kernel/drivers/nvme").exists()  # built in
    assert (mods / "modules.order").read_text().split() == sorted(listed)


@pytest.mark.usefixtures("no_depmod")
def test_generated_ramdisk_is_reproducible(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    a = ramdisk.build_generated(k, tmp_path / "a.img")
    time.sleep(1.1)  # a second later: no timestamp may leak in
    b = ramdisk.build_generated(k, tmp_path / "b.img")
    assert a.read_bytes() == b.read_bytes()
    assert ramdisk.ari_id(a) == ramdisk.ari_id(b)
    assert ramdisk.ari_id(a).startswith("ari-") and len(ramdisk.ari_id(a)) == 21


def test_missing_modules_dep_fails(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    (k.modules_dir / "modules.dep").unlink()
    with pytest.raises(BuildFailed, match="no modules.dep"):
        ramdisk.build_generated(k, tmp_path / "x.img")


def test_distro_needs_initramfs_tools_and_modules(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    root = tmp_path / "image"
    root.mkdir()
    with pytest.raises(BuildFailed, match="initramfs-tools"):
        ramdisk.build_distro(root, k, tmp_path / "x.img", tmp_path / "log")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/mkinitramfs").write_text("")
    with pytest.raises(BuildFailed, match=f"/lib/modules/{k.release}"):
        ramdisk.build_distro(root, k, tmp_path / "x.img", tmp_path / "log")


# ---------------------------------------------------------------------------------------------
# /init, function by function, under the host's busybox


def sh(tmp_path: Path, script: str) -> str:
    init = tmp_path / "init"
    init.write_text(ramdisk.init_script("6.1.0-99-test-amd64"))
    res = subprocess.run(
        [BUSYBOX, "sh", "-c", f". {init}\n{script}"],
        capture_output=True,
        text=True,
        env={"AMILAB_RAMDISK_TEST": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


# sha256 of builder/build/ramdisk-init.sh as the generated ramdisks were built with it: every
# generated ARI's ID derives from these bytes, so a change to the script must be deliberate
INIT_TEMPLATE_SHA256 = "ac61e96f4ce034fbd23c0f04a13d5d4c9df2195737a9989f887971f69033c169"


def test_init_script_is_the_shipped_file_with_its_bytes_unchanged() -> None:
    shipped = resources.files("builder.build").joinpath(ramdisk.INIT_FILE)
    beside = Path(ramdisk.__file__).with_name("ramdisk-init.sh")
    assert shipped.read_bytes() == beside.read_bytes()
    assert hashlib.sha256(beside.read_bytes()).hexdigest() == INIT_TEMPLATE_SHA256
    assert ramdisk.init_template().encode() == beside.read_bytes()
    text = ramdisk.init_script("6.1.0-99-test-amd64")
    assert "@" not in text.replace("$@", "").replace('"$@"', "")
    assert "BUILT_FOR=6.1.0-99-test-amd64\n" in text
    assert f"done < /{ramdisk.MODULES_LIST}\n" in text


@pytest.mark.usefixtures("no_depmod")
def test_generated_ramdisk_carries_the_init_file_as_its_init(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    root = tmp_path / "root"
    unpack(ramdisk.build_generated(k, tmp_path / "ari.img"), root)
    assert (root / "init").read_bytes() == ramdisk.init_script(k.release).encode()
    assert (root / "init").stat().st_mode & 0o777 == 0o755


def test_init_parses_with_busybox_sh(tmp_path: Path) -> None:
    init = tmp_path / "init"
    init.write_text(ramdisk.init_script("r"))
    subprocess.run([BUSYBOX, "sh", "-n", str(init)], check=True)


def test_init_messages_are_the_documented_ones() -> None:
    text = ramdisk.init_script("r")
    assert 'say() { echo "amilab-ramdisk: $*"; }' in text
    assert 'fail "ROOT NOT FOUND: root=$root' in text
    assert 'fail "CANNOT MOUNT ROOT: root=$root' in text
    assert 'say "switching to $root' in text
    assert "poweroff -f" in text and 'exec switch_root /newroot "$init"' in text


@pytest.mark.parametrize(
    "cmdline, expect",
    [
        ("root=LABEL=x console=ttyS0", "LABEL=x||ro||10|0|"),
        (
            "ro root=UUID=AB-CD rootfstype=ext4 rootflags=noatime,data=ordered rw init=/bin/sh",
            "UUID=AB-CD|ext4|rw|noatime,data=ordered|10|0|/bin/sh",
        ),
        ("root=/dev/vda1 rootwait rootdelay=3", "/dev/vda1||ro||60|3|"),
        ("root=PARTUUID=1234abcd-01 rootwait=7 rootdelay=x", "PARTUUID=1234abcd-01||ro||7|0|"),
        ("root=* init=*", "*||ro||10|0|*"),
    ],
)
def test_init_parses_the_kernel_command_line(tmp_path: Path, cmdline: str, expect: str) -> None:
    out = sh(
        tmp_path,
        f"parse_cmdline '{cmdline}'\n"
        'echo "$root|$rootfstype|$mode|$rootflags|$wait|$rootdelay|$init"',
    )
    assert out == expect


def test_init_finds_ext_labels(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "4M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-L", "my-root", str(img)], check=True)
    assert sh(tmp_path, f"ext_label {img}") == "my-root"
    assert sh(tmp_path, f"ext_label {tmp_path / 'init'} || echo no") == "no"


def partitioned(tmp_path: Path, label: str, header: str) -> Path:
    img = tmp_path / f"{label}.img"
    subprocess.run(["truncate", "-s", "8M", str(img)], check=True)
    table = f"label: {label}\n{header}\nstart=2048, size=4096\nstart=6144\n"
    subprocess.run(["sfdisk", "-q", str(img)], input=table, text=True, check=True)
    return img


def test_init_computes_mbr_partuuid(tmp_path: Path) -> None:
    img = partitioned(tmp_path, "dos", "label-id: 0x1234abcd")
    assert sh(tmp_path, f"partuuid_of {img} 1 512; partuuid_of {img} 2 512") == (
        "1234abcd-01\n1234abcd-02"
    )


def test_init_computes_gpt_partuuid(tmp_path: Path) -> None:
    img = partitioned(tmp_path, "gpt", "")
    want = [
        subprocess.run(
            ["sfdisk", "--part-uuid", str(img), str(n)], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .lower()
        for n in (1, 2)
    ]
    assert sh(tmp_path, f"partuuid_of {img} 1 512; partuuid_of {img} 2 512").split() == want


def test_init_root_wait_is_bounded(tmp_path: Path) -> None:
    started = time.monotonic()
    out = sh(
        tmp_path,
        "parse_cmdline 'root=/dev/amilab-absent rootwait=1'\n"
        "wait_for_root && echo found || echo missing",
    )
    assert out == "missing"
    assert time.monotonic() - started < 5
    assert sh(tmp_path, "find_root /dev/null; find_root null; echo .") == "."  # not block devices
