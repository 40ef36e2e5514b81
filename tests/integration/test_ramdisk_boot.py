"""Real kernels and the generated ramdisk, booted under QEMU (TCG: KVM hangs guests here).

The root filesystem is a tiny ext4 image whose /sbin/init is a busybox script that prints a
marker and powers off, so a boot takes seconds and needs no network or SSH.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from builder.build import kernel, ramdisk
from builder.build.kernel_tree import Kernel
from tests.conftest import need

pytestmark = pytest.mark.integration

MARKER = "AMILAB-TEST-INIT-REACHED"
INIT = f"""#!/bin/busybox sh
/bin/busybox echo "{MARKER} $(/bin/busybox uname -r)"
/bin/busybox poweroff -f
"""
BOOT_TIMEOUT = 120  # seconds; TCG boots of the cloud kernel take ~6 s here


def rootfs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for d in ("sbin", "bin", "dev", "proc", "sys"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (root / "sbin/init").write_text(INIT)
    (root / "sbin/init").chmod(0o755)
    return root


def ext4_image(tmp_path: Path, label: str) -> Path:
    img = tmp_path / "root.img"
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-L", label, "-d", str(rootfs_dir(tmp_path)), str(img)], check=True
    )
    return img


def partitioned_image(tmp_path: Path, table: str) -> tuple[Path, str]:
    """A disk with the ext4 root as partition 1; returns it and that partition's PARTUUID."""
    fs = ext4_image(tmp_path, "part-root")
    disk = tmp_path / f"disk-{table}.img"
    subprocess.run(["truncate", "-s", "20M", str(disk)], check=True)
    header = "label-id: 0x5eed1234\n" if table == "dos" else ""
    spec = f"label: {table}\n{header}start=2048, size={fs.stat().st_size // 512}\n"
    subprocess.run(["sfdisk", "-q", str(disk)], input=spec, text=True, check=True)
    subprocess.run(
        ["dd", f"if={fs}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"],
        check=True,
    )
    if table == "dos":
        return disk, "5eed1234-01"  # MBR PARTUUIDs are <disk signature>-<partition number>
    part = subprocess.run(
        ["sfdisk", "--part-uuid", str(disk), "1"], capture_output=True, text=True, check=True
    )
    return disk, part.stdout.strip()


def boot(
    k: Kernel, ari: Path, disk: Path, append: str, until: str, interface: str = "virtio"
) -> tuple[str, float, int | None]:
    """Boot and watch the console; returns (console, seconds until `until` or exit, exit code
    or None when QEMU had to be killed). QEMU is always killed at the end."""
    log = disk.parent / f"console-{time.monotonic_ns()}.log"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
        "-kernel", str(k.vmlinuz), "-initrd", str(ari), "-append", append,
        "-drive", f"file={disk},if={interface},format=raw,snapshot=on",
    ]  # fmt: skip
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            while time.monotonic() - started < BOOT_TIMEOUT:
                if until in log.read_text(errors="replace") or proc.poll() is not None:
                    break
                time.sleep(0.1)
            seconds = time.monotonic() - started
            try:
                code = proc.wait(timeout=60)  # it powers off by itself in every case tested
            except subprocess.TimeoutExpired:
                code = None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return log.read_text(errors="replace"), seconds, code


@pytest.fixture(scope="module")
def cloud() -> Kernel:
    return kernel.kernel_by_ref("debian-cloud")


@pytest.fixture(scope="module")
def cloud_ari(cloud: Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ramdisk.build_generated(cloud, tmp_path_factory.mktemp("ari") / "ari.img")


def test_cloud_kernel_resolves_to_an_exact_package(cloud: Kernel) -> None:
    assert cloud.package == f"linux-image-{cloud.release}"
    assert cloud.release.endswith("-cloud-amd64")
    assert cloud.vmlinuz.stat().st_size > 1 << 20
    assert (cloud.modules_dir / "modules.dep").exists() and cloud.config.exists()
    assert cloud.aki_id == kernel.kernel_by_ref("debian-cloud").aki_id


def test_generated_ramdisk_is_reproducible(cloud: Kernel, cloud_ari: Path, tmp_path: Path) -> None:
    again = ramdisk.build_generated(cloud, tmp_path / "again.img")
    assert ramdisk.ari_id(again) == ramdisk.ari_id(cloud_ari)


def test_boot_reaches_init_by_label(cloud: Kernel, cloud_ari: Path, tmp_path: Path) -> None:
    disk = ext4_image(tmp_path, "x")
    console, seconds, code = boot(
        cloud, cloud_ari, disk, "root=LABEL=x console=ttyS0 panic=-1", until=MARKER
    )
    assert f"{MARKER} {cloud.release}" in console, console[-3000:]
    assert "amilab-ramdisk: switching to LABEL=x" in console
    assert code == 0
    print(f"boot to marker: {seconds:.1f} s")


def test_wrong_label_says_root_not_found_and_powers_off(
    cloud: Kernel, cloud_ari: Path, tmp_path: Path
) -> None:
    disk = ext4_image(tmp_path, "x")
    started = time.monotonic()
    console, _, code = boot(
        cloud, cloud_ari, disk, "root=LABEL=wrong console=ttyS0 panic=-1", until="\0never"
    )
    elapsed = time.monotonic() - started
    line = next(x for x in console.splitlines() if x.startswith("amilab-ramdisk: ROOT NOT"))
    assert line.startswith("amilab-ramdisk: ROOT NOT FOUND: root=LABEL=wrong")
    assert "vda(LABEL=x)" in line
    assert code is not None and elapsed < 60, f"QEMU did not exit by itself ({elapsed:.0f} s)"
    assert MARKER not in console


@pytest.mark.parametrize("table", ["dos", "gpt"])
def test_boot_by_partuuid(cloud: Kernel, cloud_ari: Path, tmp_path: Path, table: str) -> None:
    disk, partuuid = partitioned_image(tmp_path, table)
    console, _, _ = boot(
        cloud, cloud_ari, disk, f"root=PARTUUID={partuuid} console=ttyS0 panic=-1", until=MARKER
    )
    assert MARKER in console, console[-3000:]
    assert "(/dev/vda1, ro)" in console


def test_unmountable_root_says_cannot_mount(cloud: Kernel, cloud_ari: Path, tmp_path: Path) -> None:
    disk = ext4_image(tmp_path, "x")
    console, _, code = boot(
        cloud, cloud_ari, disk, "root=/dev/vda rootfstype=vfat console=ttyS0 panic=-1", "\0never"
    )
    assert "amilab-ramdisk: CANNOT MOUNT ROOT: root=/dev/vda" in console, console[-3000:]
    assert code is not None


def test_generic_kernel_boots_from_ide_by_uuid(tmp_path: Path) -> None:
    """The generic kernel builds ext4 and ata_piix as modules: the ramdisk must carry them
    (and crc32c, ext4's soft dependency)."""
    generic = kernel.kernel_by_ref("debian-generic")
    ari = ramdisk.build_generated(generic, tmp_path / "ari.img")
    disk = ext4_image(tmp_path, "g")
    uuid = subprocess.run(
        ["blkid", "-s", "UUID", "-o", "value", str(disk)], capture_output=True, text=True
    ).stdout.strip()
    console, _, _ = boot(
        generic, ari, disk, f"root=UUID={uuid.upper()} rw console=ttyS0 panic=-1", MARKER, "ide"
    )
    assert f"{MARKER} {generic.release}" in console, console[-3000:]
    assert "(/dev/sda, rw)" in console


def test_distro_ramdisk_from_the_image_boots(cloud: Kernel, tmp_path: Path) -> None:
    """`ramdisk: distro`: mkinitramfs inside a minimal root with initramfs-tools and the
    kernel's modules; the result is reproducible and boots that root."""
    need("mmdebstrap", "mmdebstrap")
    from builder.build.mirror import host_mirror

    root = tmp_path / "root"
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", "--include=initramfs-tools,busybox",
         "bookworm", str(root), host_mirror().apt_lines("bookworm")[0]],
        check=True,
    )  # fmt: skip
    shutil.copytree(cloud.modules_dir, root / "lib/modules" / cloud.release, symlinks=True)
    (root / "sbin/amilab-test-init").write_text(
        f'#!/bin/sh\necho "{MARKER} $(uname -r)"\nbusybox poweroff -f\n'
    )
    (root / "sbin/amilab-test-init").chmod(0o755)
    log = tmp_path / "mkinitramfs.log"
    first = ramdisk.build_distro(root, cloud, tmp_path / "a.img", log)
    second = ramdisk.build_distro(root, cloud, tmp_path / "b.img", log)
    assert ramdisk.ari_id(first) == ramdisk.ari_id(second)
    assert not list((root / "tmp").iterdir()) and not list((root / "boot").iterdir())
    disk = tmp_path / "root.img"
    subprocess.run(["truncate", "-s", "1G", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-L", "distro", "-d", str(root), str(disk)], check=True)
    append = "root=LABEL=distro init=/sbin/amilab-test-init console=ttyS0 panic=-1"
    console, _, _ = boot(cloud, first, disk, append, until=MARKER)
    assert f"{MARKER} {cloud.release}" in console, console[-3000:]
