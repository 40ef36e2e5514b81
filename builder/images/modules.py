"""`add-modules`: a new AMI whose disk also holds another kernel's modules tree.

What EC2 users did when an AMI booted with a newer kernel found no modules for it: unpack that
kernel's modules into the image and register it again (images never change). Here the source
AMI's raw disk is copied sparsely, the copy is changed through libguestfs (never mounted on the
host, whatever its partitioning), and the copy is registered as a new AMI, optionally with
that kernel (and a ramdisk generated for it) as its default.

In the guest: the kernel's tree goes to /lib/modules/<release> as the image's own kmod
resolves that path (a merged-/usr image's /lib is a link to usr/lib: the link is followed
inside the guest, not on the host), its config to /boot/config-<release>, with the index
(modules.dep and its .bin forms) that `depmod -b` made on the host when the kernel was
unpacked into the cache; the image's kmod reads it (smoke's modprobe checks prove it).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import paths
from builder.build import kernel as kernel_mod
from builder.disk.formats import FORMATS
from builder.disk.inspection import mount_all, open_guestfs
from builder.errors import BadInput, BuildFailed
from builder.ids import file_sha256, sparse_sha256
from builder.images import factory
from builder.images.lifecycle import check_name_free, image_file, work_dir
from builder.images.records import ImageRecord, LaunchSettings, RamdiskSettings
from builder.images.registry import Registry, store_artifact
from builder.steps import Step, run_steps


@dataclass
class AddModules:
    """One add-modules run: what was asked, and what the steps made (for their cleanups)."""

    source: ImageRecord
    aki: ImageRecord
    kernel: kernel_mod.Kernel
    name: str
    default_kernel: bool
    registry: Registry
    work: Path | None = None
    disk: Path | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    ari: ImageRecord | None = None  # the ramdisk the new image boots with by default
    new_ari: bool = False  # registered by this run (dropped again if the AMI is not)
    stored: list[Path] = field(default_factory=list)  # artifacts this run put in the store
    handle: Any = None  # the libguestfs handle while it is open
    notes: list[str] = field(default_factory=list)
    result: ImageRecord | None = None


def kernel_for_aki(rec: ImageRecord) -> kernel_mod.Kernel:
    """The unpacked kernel behind a registered AKI (vmlinuz, modules tree with depmod's
    index, config): a catalogue kernel (fetched again if the cache lost it) or one from
    `register-kernel`. BadInput for PV-GRUB or a kernel no longer known."""
    return kernel_mod.kernel_for_record(rec)


def add_modules(
    ami_ref: str,
    aki_ref: str,
    *,
    default_kernel: bool = False,
    name: str | None = None,
    registry: Registry | None = None,
) -> ImageRecord:
    """Register a new AMI: `ami_ref`'s disk plus the modules tree of kernel `aki_ref`, with
    depmod run for it; with `default_kernel`, that AKI (and a generated ramdisk for it, when
    the source boots with one) is the new image's default. BadInput (exit 2) for an unknown
    image, an AKI that is not a kernel, a taken name, an hvm image asked for a default kernel,
    or an image that already holds that kernel's modules."""
    registry = registry or Registry()
    source = registry.find(ami_ref, "machine")
    aki = registry.find(aki_ref, "kernel")
    if default_kernel and source.virtualization_type != "paravirtual":
        raise BadInput(
            f"--default-kernel: {source.image_id} is {source.virtualization_type}; its own "
            "bootloader picks the kernel (an hvm image has no AKI)"
        )
    kernel = None if aki.kernel_release else kernel_for_aki(aki)
    release = aki.kernel_release or (kernel.release if kernel else "")
    if _has_tree(source, release):
        raise BadInput(f"{source.image_id} already holds the modules of {release}")
    name = name or f"{source.name}-{release}"
    check_name_free(registry, name)
    kernel = kernel or kernel_for_aki(aki)
    state = AddModules(source, aki, kernel, name, default_kernel, registry)
    run_steps([Workdir(), CopyDisk(), AddTree(), DefaultRamdisk(), Formats(), Register()], state)
    assert state.result is not None
    return state.result


def _has_tree(source: ImageRecord, release: str) -> bool:
    """What the record already says: the build installed its own kernel's tree (unless the
    recipe said `modules: omit`) and add-modules the ones it names."""
    own = source.launch.kernel_release == release and source.extra.get("modules") != "omit"
    return own or release in source.extra.get("added_modules", [])


class Workdir(Step[AddModules]):
    name = "workdir"

    def run(self, s: AddModules) -> None:
        s.work = work_dir("add-modules")

    def cleanup(self, s: AddModules) -> None:
        if s.result is None:  # not registered: drop what only it would have used
            for path in s.stored:
                path.unlink(missing_ok=True)
        if s.work is not None:
            shutil.rmtree(s.work, ignore_errors=True)


class CopyDisk(Step[AddModules]):
    """A sparse copy (a reflink where the filesystem has them): the source is only read."""

    name = "copy"

    def run(self, s: AddModules) -> None:
        assert s.work is not None
        src = image_file(s.source)
        s.disk = s.work / "disk.raw"
        subprocess.run(
            ["cp", "--sparse=always", "--reflink=auto", str(src), str(s.disk)],
            check=True, capture_output=True,
        )  # fmt: skip
        s.disk.chmod(0o644)  # stored artifacts are read-only


class AddTree(Step[AddModules]):
    name = "modules"

    def run(self, s: AddModules) -> None:
        assert s.disk is not None and s.work is not None
        k = s.kernel
        tarball, base = s.work / "modules.tar", _indexed_tree(k, s.work)
        subprocess.run(
            ["tar", "-C", str(base), "--owner=0", "--group=0", "--numeric-owner",
             "-cf", str(tarball), k.release],
            check=True, capture_output=True,
        )  # fmt: skip
        s.handle = open_guestfs(s.disk, "raw", readonly=False)
        g = s.handle
        try:
            _mount_root(g, s.source)
            try:
                s.notes += install_tree(g, tarball, k.release, k.config)
            finally:
                g.umount_all()
            g.shutdown()  # flushes the copy; an error here is an error of the whole run
        except RuntimeError as e:  # libguestfs's errors: one line, not a traceback
            lines = str(e).strip().splitlines() or ["?"]
            raise BuildFailed(f"libguestfs: {lines[-1]}") from None

    def cleanup(self, s: AddModules) -> None:
        if s.handle is not None:
            s.handle.close()  # stops the appliance if run() did not
            s.handle = None


def _indexed_tree(k: kernel_mod.Kernel, work: Path) -> Path:
    """The directory holding `<release>/` with depmod's index: the cached tree (unpacking ran
    `depmod -b` on the host; kmod's index format is stable, and the guest's own depmod under
    TCG would add ~20 s for the same files), else a staged copy indexed here."""
    if (k.modules_dir / "modules.dep.bin").is_file():
        return k.modules_dir.parent
    stage = work / "stage"
    (stage / "lib/modules").mkdir(parents=True)
    shutil.copytree(k.modules_dir, stage / "lib/modules" / k.release, symlinks=True)
    subprocess.run(["depmod", "-b", str(stage), k.release], check=True, capture_output=True)
    return stage / "lib/modules"


def _mount_root(g: Any, source: ImageRecord) -> None:
    """Mount the image's filesystems: an import's inspected mountpoints, else the root the
    launch settings locate (the whole disk, or the partition at its recorded offset)."""
    os_ = source.extra.get("os") or {}
    if isinstance(os_, dict) and os_.get("mountpoints"):
        mount_all(g, os_["mountpoints"], readonly=False)
        return
    g.mount(root_device(g, source.launch), "/")


def root_device(g: Any, launch: LaunchSettings) -> str:
    """The root filesystem's device in the appliance, from the typed launch settings."""
    disk = g.list_devices()[0]
    if (launch.partitioning or "none") == "none":
        return str(disk)
    root = launch.partitions.get("root")
    offset = root.offset if root is not None else launch.fs_offset
    for part in g.part_list(disk):
        if int(part["part_start"]) == offset:
            return f"{disk}{part['part_num']}"
    if launch.root_label:
        try:
            return str(g.findfs_label(launch.root_label))
        except RuntimeError:
            pass
    raise BadInput(f"no partition starts at {offset} on the disk: cannot find the root")


def install_tree(g: Any, tarball: Path, release: str, config: Path | None) -> list[str]:
    """Unpack the modules tar (one top directory, `release`, depmod's index inside) where
    the guest's kmod looks. BadInput if that tree is already there."""
    base = str(g.realpath("/lib/modules")) if g.exists("/lib/modules") else "/lib/modules"
    if g.exists(f"{base}/{release}"):
        raise BadInput(f"the image already holds {base}/{release}")
    g.mkdir_p(base)
    g.tar_in(str(tarball), base)
    notes = [f"modules: {base}/{release}"]
    if config is not None and config.is_file():
        g.mkdir_p("/boot")
        g.upload(str(config), f"/boot/config-{release}")
        notes.append(f"config: /boot/config-{release}")
    notes.append(f"depmod: index made by depmod -b on the host for {release}")
    return notes


class DefaultRamdisk(Step[AddModules]):
    """With --default-kernel, the ramdisk to boot it with: the generated one registered for
    that AKI, else one built now, when the source boots with a ramdisk at all."""

    name = "ramdisk"

    def run(self, s: AddModules) -> None:
        if not s.default_kernel or not s.source.ramdisk_id:
            return
        registered = [
            r for r in s.registry.list("ramdisk")
            if r.ramdisk_settings.built_for == s.aki.image_id
            and r.ramdisk_settings.kind == "generated"
        ]  # fmt: skip
        if registered:
            s.ari = registered[-1]
            return
        from builder.build import ramdisk as ramdisk_mod

        assert s.work is not None
        k = s.kernel
        out = ramdisk_mod.build_generated(k, s.work / "initrd.img")
        digest = file_sha256(out)
        path = _store(s, out, digest, ".initrd")
        s.ari = factory.content_image(
            digest, f"initrd-{k.release}-generated", str(path),
            RamdiskSettings(kind="generated", built_for=s.aki.image_id), release=k.release,
            description=f"generated ramdisk for {k.release}",
        )  # fmt: skip
        s.new_ari = s.registry.get(s.ari.image_id) is None
        s.ari = s.registry.register([s.ari])[0]

    def cleanup(self, s: AddModules) -> None:
        if s.new_ari and s.result is None and s.ari is not None:
            s.registry.remove(s.ari.image_id)


class Formats(Step[AddModules]):
    """The other formats the source was stored as, written from the changed raw disk."""

    name = "formats"

    def run(self, s: AddModules) -> None:
        assert s.disk is not None and s.work is not None
        for fmt in s.source.locations or {"raw": ""}:
            if fmt == "raw":
                s.outputs["raw"] = s.disk
                continue
            out = s.work / f"disk{FORMATS[fmt].suffix}"
            FORMATS[fmt].write(s.disk, out)
            s.outputs[fmt] = out
        s.outputs.setdefault("raw", s.disk)  # the launch reads a raw disk


class Register(Step[AddModules]):
    name = "register"

    def run(self, s: AddModules) -> None:
        assert s.disk is not None
        src, release = s.source, s.kernel.release
        digest = sparse_sha256(s.disk)
        locations = {
            fmt: str(_store(s, path, digest if fmt == "raw" else file_sha256(path),
                            FORMATS[fmt].suffix))
            for fmt, path in s.outputs.items()
        }  # fmt: skip
        launch = copy.deepcopy(src.launch)
        trees = launch.kernel_releases or ([launch.kernel_release] if launch.kernel_release else [])
        launch.kernel_releases = [*trees, release]
        reg = factory.Registration.of(src)
        reg = factory.Registration(
            s.name, reg.virtualization, reg.root_device_name, reg.architecture,
            s.aki.image_id if s.default_kernel else reg.kernel_id,
            (s.ari.image_id if s.ari else None) if s.default_kernel else reg.ramdisk_id,
        )  # fmt: skip
        first = next(iter(src.locations), "raw")
        rec = factory.machine_image(
            reg, digest, launch, locations,
            description=src.description,
            image_location=locations.get(first, locations["raw"]),
            instance_store=src.root_device_type == "instance-store",
            extra={**src.extra, "source_image_id": src.image_id,
                   "added_modules": [*src.extra.get("added_modules", []), release],
                   "added_modules_from": s.aki.image_id, "add_modules_notes": s.notes},
            id_extra={"modules_added_from": s.aki.image_id, "source_image_id": src.image_id},
            fresh=True,
        )  # fmt: skip
        s.result = s.registry.register_new(rec)


def _store(s: AddModules, path: Path, digest: str, suffix: str) -> Path:
    existed = (paths.artifacts_dir() / digest[:2] / f"{digest}{suffix}").exists()
    dest = store_artifact(path, digest, suffix)
    if not existed:
        s.stored.append(dest)
    return dest


def register_catalogue_kernel(
    name: str, registry: Registry | None = None, log: Path | None = None
) -> tuple[ImageRecord, ImageRecord]:
    """The AKI and generated ARI of a catalogue kernel, as a build's Register step makes them
    (the kernel is downloaded and unpacked on first use, then cached), without building an
    image: what the tests and bench/kernels.py register other releases' kernels with."""
    from builder.build import ramdisk as ramdisk_mod
    from builder.images.records import KernelSettings

    registry = registry or Registry()
    k = kernel_mod.resolve_kernel(kernel_mod.definition(name), log=log)
    work = work_dir("kernel")
    try:
        vmlinuz = work / "vmlinuz"
        shutil.copy2(k.vmlinuz, vmlinuz)
        kernel_path = store_artifact(vmlinuz, k.digest, ".vmlinuz")
        initrd = ramdisk_mod.build_generated(k, work / "initrd.img")
        digest = file_sha256(initrd)
        initrd_path = store_artifact(initrd, digest, ".initrd")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    aki = factory.content_image(
        k.digest, f"{k.name}-{k.release}", str(kernel_path),
        KernelSettings(definition=k.name, package=k.package, cmdline=k.cmdline),
        release=k.release, version=k.version, description=f"{k.package} {k.version}",
    )  # fmt: skip
    ari = factory.content_image(
        digest, f"initrd-{k.release}-generated", str(initrd_path),
        RamdiskSettings(kind="generated", built_for=k.aki_id), release=k.release,
        description=f"generated ramdisk for {k.release}",
    )  # fmt: skip
    aki, ari = registry.register([aki, ari])
    return aki, ari
