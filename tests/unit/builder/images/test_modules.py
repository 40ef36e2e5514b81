"""add-modules without a VM: synthetic images in a temporary registry, libguestfs replaced by a
fake handle that applies what it is asked to a directory, so argument and registry errors,
what the new record says, the untouched source and the cleanup after a failure are checked
in seconds. The real disk change is tests/integration/test_add_modules.py's."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from builder.build.bootloader import first_entry, grub_cfg, menu_lst
from builder.build.kernel_tree import Kernel
from builder.errors import BadInput, BuildFailed
from builder.ids import file_sha256, sparse_sha256
from builder.images import factory
from builder.images import modules as mod
from builder.images.records import (
    KernelSettings,
    LaunchSettings,
    Partition,
    RamdiskSettings,
)
from builder.images.registry import ImageRecord, Registry
from harness.cli import main
from tests.unit.builder.images.test_lifecycle import write_sparse

RELEASE = "7.2.13+deb14-cloud-amd64"


class FakeGuest:
    """The libguestfs calls add-modules makes, applied to `root` (the guest's /)."""

    def __init__(self, root: Path, partitions: list[dict[str, int]] | None = None) -> None:
        self.root, self.parts = root, partitions or []
        self.calls: list[tuple[Any, ...]] = []
        self.closed = False

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def list_devices(self) -> list[str]:
        return ["/dev/sda"]

    def part_list(self, disk: str) -> list[dict[str, int]]:
        return self.parts

    def findfs_label(self, label: str) -> str:
        raise RuntimeError("not found")

    def mount(self, device: str, where: str) -> None:
        self.calls.append(("mount", device, where))

    def umount_all(self) -> None:
        pass

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))

    def close(self) -> None:
        self.closed = True

    def exists(self, path: str) -> bool:
        return self._p(path).exists()

    def is_file(self, path: str, followsymlinks: bool = False) -> bool:
        return self._p(path).is_file()

    def read_file(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    def realpath(self, path: str) -> str:
        return "/" + str(self._p(path).resolve().relative_to(self.root.resolve()))

    def mkdir_p(self, path: str) -> None:
        self._p(path).mkdir(parents=True, exist_ok=True)

    def tar_in(self, tarball: str, where: str) -> None:
        with tarfile.open(tarball) as t:
            t.extractall(self._p(where))  # noqa: S202 (our own tarball)

    def upload(self, src: str, dest: str) -> None:
        self._p(dest).write_bytes(Path(src).read_bytes())



def fake_kernel(tmp: Path, release: str = RELEASE) -> Kernel:
    tree = tmp / "kernel/usr/lib/modules" / release
    (tree / "kernel/fs").mkdir(parents=True)
    (tree / "kernel/fs/isofs.ko.xz").write_bytes(b"module")
    (tree / "modules.dep").write_text("kernel/fs/isofs.ko.xz:\n")
    (tree / "modules.dep.bin").write_bytes(b"index")
    vmlinuz = tmp / "kernel/vmlinuz"
    vmlinuz.write_bytes(os.urandom(4096))
    config = tree / "config"
    config.write_text("CONFIG_ISO9660_FS=m\n")
    return Kernel("debian-cloud-sid", "linux-image-x", "1", release, vmlinuz, tree, config,
                  file_sha256(vmlinuz), ("virtio_blk",), "console=ttyS0")  # fmt: skip


@pytest.fixture
def world(amilab_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A paravirtual AMI built with 6.1 (raw + qcow2), an hvm AMI, and a sid AKI."""
    files = tmp_path / "files"
    files.mkdir()
    disk = write_sparse(files / "disk.raw", 32 << 20, [(0, os.urandom(1 << 20))])
    qcow = files / "disk.qcow2"
    qcow.write_bytes(b"QFI\xfb")
    kernel = fake_kernel(tmp_path)
    aki = factory.content_image(
        kernel.digest, "sid", str(kernel.vmlinuz), KernelSettings(definition="debian-cloud-sid"),
        release=RELEASE,
    )  # fmt: skip
    own = files / "vmlinuz-own"
    own.write_bytes(os.urandom(100))
    own_aki = factory.content_image(file_sha256(own), "own", str(own), KernelSettings(),
                                    release="6.1.0-56-cloud-amd64")  # fmt: skip
    initrd = files / "initrd"
    initrd.write_bytes(os.urandom(100))
    own_ari = factory.content_image(file_sha256(initrd), "own-initrd", str(initrd),
                                    RamdiskSettings("generated", own_aki.image_id))  # fmt: skip
    digest = sparse_sha256(disk)
    launch = LaunchSettings(disk_size=32 << 20, partitioning="none",
                            kernel_release="6.1.0-56-cloud-amd64")  # fmt: skip
    pv = factory.machine_image(
        factory.Registration("pv", "paravirtual", "/dev/sda1", kernel_id=own_aki.image_id,
                             ramdisk_id=own_ari.image_id),
        digest, launch, {"raw": str(disk), "qcow2": str(qcow)},
        extra={"modules": "install", "recipe": {"checks": {"modules": ["isofs"]}}},
    )  # fmt: skip
    hvm = factory.machine_image(
        factory.Registration("hvm", "hvm", "/dev/xvda"), digest,
        LaunchSettings(disk_size=32 << 20, partitioning="gpt",
                       partitions={"root": Partition(1 << 20, 30 << 20)}),
        {"raw": str(disk)},
    )  # fmt: skip
    Registry().register([aki, own_aki, own_ari, pv, hvm])
    guest_root = tmp_path / "guest"
    (guest_root / "usr/lib/modules/6.1.0-56-cloud-amd64").mkdir(parents=True)
    (guest_root / "lib").symlink_to("usr/lib")  # a merged-/usr image
    guest = FakeGuest(guest_root, [{"part_num": 2, "part_start": 1 << 20}])
    opened: list[Path] = []

    def open_fake(path: Path, fmt: str, readonly: bool = True) -> FakeGuest:
        assert not readonly and fmt == "raw" and path != disk
        opened.append(path)
        return guest

    monkeypatch.setattr(mod, "open_guestfs", open_fake)
    monkeypatch.setattr(mod, "kernel_for_aki", lambda rec: kernel)
    monkeypatch.setattr(mod.FORMATS["qcow2"], "write", lambda src, out: out.write_bytes(b"Q"))
    return {"home": amilab_home, "disk": disk, "digest": digest, "aki": aki, "pv": pv,
            "hvm": hvm, "own_aki": own_aki, "own_ari": own_ari, "guest": guest,
            "opened": opened, "kernel": kernel}  # fmt: skip


def _leftovers(home: Path) -> list[Path]:
    work = home / "work"
    return list(work.iterdir()) if work.is_dir() else []


def test_new_ami_with_the_tree_default_kernel_and_generated_ramdisk(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def build_generated(kernel: Kernel, out: Path) -> Path:
        out.write_bytes(b"initrd for " + kernel.release.encode())
        return out

    monkeypatch.setattr("builder.build.ramdisk.build_generated", build_generated)
    rec = mod.add_modules("pv", world["aki"].image_id, default_kernel=True)
    guest: FakeGuest = world["guest"]
    # written where the guest's kmod looks: /lib is a link to usr/lib, followed in the guest
    tree = guest.root / "usr/lib/modules" / RELEASE
    assert (tree / "kernel/fs/isofs.ko.xz").read_bytes() == b"module"
    assert (guest.root / f"boot/config-{RELEASE}").is_file()
    assert (tree / "modules.dep.bin").is_file()  # depmod's index, made on the host
    assert ("mount", "/dev/sda", "/") in guest.calls and guest.closed
    assert rec.name == f"pv-{RELEASE}" and rec.image_id != world["pv"].image_id
    assert rec.kernel_id == world["aki"].image_id
    ari = Registry().get(rec.ramdisk_id or "")
    assert ari is not None and ari.ramdisk_settings == RamdiskSettings(
        "generated", world["aki"].image_id
    )
    assert set(rec.locations) == {"raw", "qcow2"}
    assert rec.digest == sparse_sha256(Path(rec.locations["raw"]))
    assert rec.launch.kernel_releases == ["6.1.0-56-cloud-amd64", RELEASE]
    assert rec.extra["added_modules"] == [RELEASE] and rec.extra["source_image_id"]
    assert rec.extra["recipe"]["checks"] == {"modules": ["isofs"]}  # smoke's modprobe list
    # the source: same record, same disk bytes, and its disk was never opened
    assert sparse_sha256(world["disk"]) == world["digest"]
    assert Registry().get(world["pv"].image_id) is not None
    assert world["disk"] not in world["opened"]
    assert _leftovers(world["home"]) == []
    # a second time for the same kernel: that image already holds the tree
    with pytest.raises(BadInput, match="already holds the modules"):
        mod.add_modules(rec.image_id, world["aki"].image_id)


def test_without_default_kernel_keeps_the_source_kernel(world: dict[str, Any]) -> None:
    rec = mod.add_modules("pv", world["aki"].image_id, name="with-sid")
    assert rec.name == "with-sid"
    assert (rec.kernel_id, rec.ramdisk_id) == (world["own_aki"].image_id,
                                               world["own_ari"].image_id)  # fmt: skip


def test_a_registered_ramdisk_for_the_kernel_is_reused(world: dict[str, Any]) -> None:
    initrd = world["home"] / "sid-initrd"
    initrd.write_bytes(b"registered")
    ari = factory.content_image(file_sha256(initrd), "sid-initrd", str(initrd),
                                RamdiskSettings("generated", world["aki"].image_id))  # fmt: skip
    Registry().register([ari])
    rec = mod.add_modules("pv", world["aki"].image_id, default_kernel=True)
    assert rec.ramdisk_id == ari.image_id


def test_hvm_partitioned_root_found_by_offset(world: dict[str, Any]) -> None:
    rec = mod.add_modules("hvm", world["aki"].image_id)
    assert ("mount", "/dev/sda2", "/") in world["guest"].calls
    assert rec.virtualization_type == "hvm" and rec.kernel_id is None


def test_hvm_default_kernel_goes_first_in_its_own_grub_menus(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hvm image boots its own GRUB: the kernel, an initrd made for it and a first menu
    entry go into the disk, as installing a kernel package in an EC2 HVM instance does."""
    monkeypatch.setattr("builder.build.ramdisk.build_generated",
                        lambda k, out: (out.write_bytes(b"initrd"), out)[1])  # fmt: skip
    old = "6.1.0-56-cloud-amd64"
    grub = world["guest"].root / "boot/grub"
    grub.mkdir(parents=True)
    args = "root=UUID=0f0f ro console=ttyS0"
    (grub / "grub.cfg").write_text(grub_cfg(old, args, initrd=True))
    (grub / "menu.lst").write_text(menu_lst(old, args, initrd=True, root_partition=3))
    rec = mod.add_modules("hvm", world["aki"].image_id, default_kernel=True)
    boot = world["guest"].root / "boot"
    assert (boot / f"vmlinuz-{RELEASE}").read_bytes() == world["kernel"].vmlinuz.read_bytes()
    assert (boot / f"initrd.img-{RELEASE}").read_bytes() == b"initrd"
    for name, kind in (("grub.cfg", "grub"), ("menu.lst", "menu")):
        text = (grub / name).read_text()
        assert first_entry(text, kind)[2:] == (RELEASE, True), text  # type: ignore[index]
        assert f"vmlinuz-{old} {args}" in text and f"vmlinuz-{RELEASE} {args}" in text
    assert rec.kernel_id is None and rec.launch.expected_release == RELEASE


def test_hvm_default_kernel_without_a_grub_menu_is_refused(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {r.image_id for r in Registry().list()}
    assert main(["add-modules", "hvm", "--kernel", "sid", "--default-kernel"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no /boot/grub/grub.cfg" in err, err
    assert {r.image_id for r in Registry().list()} == before
    assert _leftovers(world["home"]) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["ami-0000000000000000", "--kernel", "sid"], "no such machine image"),
        (["pv", "--kernel", "{pv}"], "is a machine image, not a kernel image"),
        (["pv", "--kernel", "{own_ari}"], "is a ramdisk image, not a kernel image"),
        (["pv", "--kernel", "own-initrd"], "no such kernel image"),
        (["pv", "--kernel", "own"], "already holds the modules of 6.1.0-56-cloud-amd64"),
        (["pv", "--kernel", "sid", "--name", "hvm"], "already in use"),
    ],
)
def test_refusals_exit_2_with_one_line_and_nothing_registered(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = {r.image_id for r in Registry().list()}
    ids = {"pv": world["pv"].image_id, "own_ari": world["own_ari"].image_id}
    assert main(["add-modules", *(a.format(**ids) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("amilab: ")
    assert re.search(message, err), err
    assert {r.image_id for r in Registry().list()} == before
    assert world["opened"] == [] and _leftovers(world["home"]) == []


def test_tree_already_on_the_disk_is_refused_and_cleaned_up(world: dict[str, Any]) -> None:
    """The record may not know (an imported image): the disk itself is checked too."""
    (world["guest"].root / "usr/lib/modules" / RELEASE).mkdir()
    artifacts = world["home"] / "artifacts"
    before = sorted(artifacts.rglob("*")) if artifacts.exists() else []
    with pytest.raises(BadInput, match="already holds"):
        mod.add_modules("pv", world["aki"].image_id, default_kernel=True)
    assert [r.name for r in Registry().list("machine")] == ["pv", "hvm"]
    assert world["guest"].closed and _leftovers(world["home"]) == []
    assert (sorted(artifacts.rglob("*")) if artifacts.exists() else []) == before


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_failure_or_interrupt_leaves_nothing(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    def broken(*args: Any) -> str:
        raise error("tar_in: boom")

    monkeypatch.setattr(world["guest"], "tar_in", broken)
    raised = KeyboardInterrupt if error is KeyboardInterrupt else BuildFailed
    with pytest.raises(raised):
        mod.add_modules("pv", world["aki"].image_id, default_kernel=True)
    assert [r.name for r in Registry().list("machine")] == ["pv", "hvm"]
    assert len(Registry().list("ramdisk")) == 1  # no ARI left registered for the sid kernel
    assert world["guest"].closed and _leftovers(world["home"]) == []
    assert sparse_sha256(world["disk"]) == world["digest"]


def test_root_device_from_launch_settings() -> None:
    g = FakeGuest(Path("/nonexistent"), [{"part_num": 1, "part_start": 1 << 20},
                                         {"part_num": 3, "part_start": 200 << 20}])  # fmt: skip
    assert mod.root_device(g, LaunchSettings(partitioning="none")) == "/dev/sda"
    gpt = LaunchSettings(partitioning="gpt", partitions={"root": Partition(200 << 20, 1)})
    assert mod.root_device(g, gpt) == "/dev/sda3"
    mbr = LaunchSettings(partitioning="mbr", fs_offset=1 << 20)
    assert mod.root_device(g, mbr) == "/dev/sda1"
    with pytest.raises(BadInput, match="no partition starts at 4096"):
        mod.root_device(g, LaunchSettings(partitioning="mbr", fs_offset=4096))


def test_kernel_for_aki_refuses_pv_grub_and_unknown_definitions() -> None:
    for settings, message in ((KernelSettings(pv_grub=True, definition="pv-grub"), "PV-GRUB"),
                              (KernelSettings(definition="no-such-kernel"), "no longer in")):
        rec = ImageRecord("aki-0000000000000000", "kernel", "k")
        rec.kernel_settings = settings
        with pytest.raises(BadInput, match=message):
            mod.kernel_for_aki(rec)


def test_a_tree_without_an_index_is_indexed_on_a_staged_copy(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    (k.modules_dir / "modules.dep.bin").unlink()
    (tmp_path / "work").mkdir()
    base = mod._indexed_tree(k, tmp_path / "work")
    assert (base / RELEASE / "modules.dep.bin").is_file()
    assert not (k.modules_dir / "modules.dep.bin").exists()  # the cache is only read


def test_ext4_root_is_written_with_e2fsprogs_not_libguestfs(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A real ext4 root in a GPT-style partition: debugfs writes the copy (no appliance: the
    fake libguestfs handle is never opened), e2fsck passes, the source stays as it was."""
    from tests.unit.builder.disk.test_e2fs import OFFSET, _image, _merged_usr

    disk = _image(tmp_path, _merged_usr(tmp_path))
    digest = sparse_sha256(disk)
    src = factory.machine_image(
        factory.Registration("ext4", "paravirtual", "/dev/sda1",
                             kernel_id=world["own_aki"].image_id),
        digest, LaunchSettings(disk_size=disk.stat().st_size, partitioning="gpt",
                               partitions={"root": Partition(OFFSET, 64 << 20)}),
        {"raw": str(disk)},
    )  # fmt: skip
    Registry().register([src])
    rec = mod.add_modules("ext4", world["aki"].image_id)
    assert world["opened"] == []
    assert rec.extra["add_modules_notes"][0] == f"modules: /usr/lib/modules/{RELEASE}"
    assert "e2fsprogs" in rec.extra["add_modules_notes"][-1]
    new = Path(rec.locations["raw"])
    out = subprocess.run(["debugfs", "-R", f"ls /usr/lib/modules/{RELEASE}/kernel/fs",
                          f"{new}?offset={OFFSET}"], capture_output=True, text=True)  # fmt: skip
    assert "isofs.ko.xz" in out.stdout
    assert subprocess.run(["e2fsck", "-fn", f"{new}?offset={OFFSET}"]).returncode == 0
    assert sparse_sha256(disk) == digest and _leftovers(world["home"]) == []
