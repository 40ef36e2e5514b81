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
import posixpath
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from builder import paths
from builder.build import kernel as kernel_mod
from builder.build.kernel_catalogue import DEFAULT_RELEASE
from builder.build.kernel_tree import Kernel
from builder.build.own_kernel import OWN_KERNEL_KEY
from builder.disk import e2fs
from builder.disk.formats import FORMATS
from builder.disk.inspection import mount_all, open_guestfs
from builder.errors import BadInput, BuildFailed
from builder.ids import file_sha256, sparse_sha256
from builder.images import factory
from builder.images.image_files import image_file, work_dir
from builder.images.kernel_refs import find_kernel
from builder.images.records import ImageRecord, LaunchSettings, RamdiskSettings
from builder.images.registry import Registry, check_name_free, store_artifact
from builder.modules.own_headers import headers_of
from builder.modules.rebuild import RECORD_KEY, Rebuilt, rebuild
from builder.steps import Step, run_steps


@dataclass
class AddModules:
    """One add-modules run: what was asked, and what the steps made (for their cleanups)."""

    source: ImageRecord
    aki: ImageRecord
    kernel: Kernel
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
    rebuilt: Rebuilt | None = None  # the image's out-of-tree modules built for the kernel
    result: ImageRecord | None = None


def kernel_for_aki(rec: ImageRecord) -> Kernel:
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
    depmod run for it; with `default_kernel`, that kernel is what the new image boots: a
    paravirtual image's AKI (with a ramdisk generated for it when the source boots with one),
    an hvm image's first GRUB entry (the kernel, and an initrd generated for it, into /boot,
    as installing a kernel package in an EC2 HVM instance does). BadInput (exit 2) for an
    unknown image, an AKI that is not a kernel, a taken name, an image whose GRUB menu has no
    entry to copy, or an image that already holds that kernel's modules."""
    registry = registry or Registry()
    source = registry.find(ami_ref, "machine")
    aki = find_kernel(aki_ref, registry)
    kernel = None if aki.kernel_release else kernel_for_aki(aki)
    release = aki.kernel_release or (kernel.release if kernel else "")
    if _has_tree(source, release):
        raise BadInput(f"{source.image_id} already holds the modules of {release}")
    name = name or f"{source.name}-{release}"
    check_name_free(registry, name)
    kernel = kernel or kernel_for_aki(aki)
    state = AddModules(source, aki, kernel, name, default_kernel, registry)
    steps = [Workdir(), Rebuild(), CopyDisk(), AddTree(), DefaultRamdisk(), Formats(), Register()]
    run_steps(steps, state)
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


class Rebuild(Step[AddModules]):
    """The image's out-of-tree modules (dkms, extra-modules) built for the kernel inside a
    copy of the image's tree (builder.modules.rebuild), before the disk is copied: a failed
    build ends the run with nothing copied or registered."""

    name = "rebuild"

    def run(self, s: AddModules) -> None:
        modules = s.source.extra.get(RECORD_KEY) or []
        if not modules or _import_mounts(s.source):
            return
        assert s.work is not None
        own_tree = headers_of(s.aki)
        if own_tree is None and OWN_KERNEL_KEY in s.aki.extra and not s.kernel.package:
            raise BuildFailed(
                f"module-build-failed: {', '.join(m['Name'] for m in modules)} for "
                f"{s.kernel.release}: {s.aki.image_id} was registered without --headers (its "
                "build tree), so there is nothing to build them against"
            )
        suite = (s.source.extra.get("recipe") or {}).get("release") or DEFAULT_RELEASE
        s.rebuilt = rebuild(modules, image_file(s.source), _root_offset(s.source), s.kernel,
                            s.work / "rebuild", own_tree, suite)  # fmt: skip
        s.notes += s.rebuilt.notes


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
    """The kernel's modules tree (and config; for an hvm image's default kernel also its
    vmlinuz, initrd and boot menu entries) into the copy: with e2fsprogs where the root is an
    ext2/3/4 filesystem at a known offset, else through libguestfs (an import's mountpoints,
    LVM, xfs, a filesystem e2fsprogs cannot write safely)."""

    name = "modules"

    def run(self, s: AddModules) -> None:
        assert s.disk is not None and s.work is not None
        k = s.kernel
        base = s.rebuilt.base if s.rebuilt and s.rebuilt.base else _indexed_tree(k, s.work)
        boot = _boot_files(s)
        fs = None if _import_mounts(s.source) else e2fs.open_fs(s.disk, _root_offset(s.source))
        if fs is not None:
            try:
                target = E2fsTarget(fs)
                s.notes += install(target, base, k.release, k.config, boot)
                target.commit()
                s.notes.append("written with e2fsprogs (debugfs), checked with e2fsck -fn")
                return
            except e2fs.Unsupported as e:
                s.notes.append(f"libguestfs instead of e2fsprogs: {e}")
        s.handle = open_guestfs(s.disk, "raw", readonly=False)
        g = s.handle
        try:
            _mount_root(g, s.source)
            try:
                s.notes += install(GuestfsTarget(g, s.work), base, k.release, k.config, boot)
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


@dataclass
class BootFiles:
    """An hvm image's new default kernel, and where to make its initrd and menus."""

    kernel: Kernel
    work: Path


def _hvm(s: AddModules) -> bool:
    return s.source.virtualization_type == "hvm"


def _boot_files(s: AddModules) -> BootFiles | None:
    if not (s.default_kernel and _hvm(s)):
        return None
    assert s.work is not None
    return BootFiles(s.kernel, s.work)


def _import_mounts(source: ImageRecord) -> list[Any]:
    os_ = source.extra.get("os") or {}
    return list(os_.get("mountpoints") or []) if isinstance(os_, dict) else []


def _root_offset(source: ImageRecord) -> int:
    launch = source.launch
    if (launch.partitioning or "none") == "none":
        return 0
    root = launch.partitions.get("root")
    return root.offset if root is not None else launch.fs_offset


class E2fsTarget:
    """The image's root filesystem through debugfs: paths resolved as the guest resolves
    them, commands collected and run at once by `commit` (then e2fsck checks the result)."""

    def __init__(self, fs: e2fs.E2fs) -> None:
        self.fs = fs
        self.commands: list[str] = []
        self.made: set[str] = set()  # directories the pending commands create

    def resolve(self, path: str) -> str:
        return self.fs.resolve(path)

    def exists(self, path: str) -> bool:
        return path in self.made or self.fs.lookup(self.fs.resolve(path)) is not None

    def read_text(self, path: str) -> str | None:
        return self.fs.read_text(path)

    def _parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent in self.made:
            return
        mk = self.fs.mkdir_commands(parent)
        self.commands += mk
        self.made.update(c.split('"')[1] for c in mk)

    def put_tree(self, src: Path, dest: str) -> None:
        self._parents(dest)
        self.commands += self.fs.tree_commands(src, dest)

    def put_file(self, src: Path, dest: str) -> None:
        self._parents(dest)
        self.commands += self.fs.file_commands(src, dest)

    def commit(self) -> None:
        self.fs.run(self.commands)


class GuestfsTarget:
    """The image's filesystems mounted in the libguestfs appliance."""

    def __init__(self, g: Any, work: Path) -> None:
        self.g, self.work = g, work

    def resolve(self, path: str) -> str:
        g, parts, tail = self.g, path.rstrip("/"), []
        while parts and not g.exists(parts):  # realpath needs an existing path
            parts, name = posixpath.split(parts)
            tail.insert(0, name)
        return posixpath.join(str(g.realpath(parts or "/")), *tail)

    def exists(self, path: str) -> bool:
        return bool(self.g.exists(path))

    def read_text(self, path: str) -> str | None:
        if not self.g.is_file(path, followsymlinks=True):
            return None
        return bytes(self.g.read_file(path)).decode(errors="replace")

    def put_tree(self, src: Path, dest: str) -> None:
        tarball = self.work / "modules.tar"
        subprocess.run(
            ["tar", "-C", str(src.parent), "--owner=0", "--group=0", "--numeric-owner",
             "-cf", str(tarball), src.name],
            check=True, capture_output=True,
        )  # fmt: skip
        parent = posixpath.dirname(dest)
        self.g.mkdir_p(parent)
        self.g.tar_in(str(tarball), parent)
        if posixpath.basename(dest) != src.name:
            self.g.rename(posixpath.join(parent, src.name), dest)

    def put_file(self, src: Path, dest: str) -> None:
        self.g.mkdir_p(posixpath.dirname(dest))
        self.g.upload(str(src), dest)


def _indexed_tree(k: Kernel, work: Path) -> Path:
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
    if _import_mounts(source):
        mount_all(g, source.extra["os"]["mountpoints"], readonly=False)
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


class Target(Protocol):
    def resolve(self, path: str) -> str: ...
    def exists(self, path: str) -> bool: ...
    def read_text(self, path: str) -> str | None: ...
    def put_tree(self, src: Path, dest: str) -> None: ...
    def put_file(self, src: Path, dest: str) -> None: ...


def install(
    t: Target, base: Path, release: str, config: Path | None, boot: BootFiles | None = None
) -> list[str]:
    """The modules tree `base/<release>` (depmod's index inside) where the guest's kmod looks
    (/lib/modules as the image resolves it), the config beside the image's kernels, and for an
    hvm image's new default kernel its vmlinuz and initrd in /boot with a first entry in the
    image's GRUB menus (grub.cfg; menu.lst for PV-GRUB). BadInput if that tree is there."""
    where = t.resolve(f"/lib/modules/{release}")
    if t.exists(where):
        raise BadInput(f"the image already holds {where}")
    t.put_tree(base / release, where)
    notes = [f"modules: {where}"]
    if config is not None and config.is_file():
        t.put_file(config, t.resolve(f"/boot/config-{release}"))
        notes.append(f"config: /boot/config-{release}")
    notes.append(f"depmod: index made by depmod -b on the host for {release}")
    if boot is not None:
        notes += _install_boot(t, boot)
    return notes


def _install_boot(t: Target, boot: BootFiles) -> list[str]:
    """What Debian's kernel package and update-grub would leave: /boot/vmlinuz-<release>,
    /boot/initrd.img-<release> when the current entry loads an initrd, and a copy of the
    menus' first entry for that kernel put first (the old kernel stays on the menu)."""
    from builder.build.bootloader import first_entry, with_default_entry

    menus = {}
    for path, kind in (("/boot/grub/grub.cfg", "grub"), ("/boot/grub/menu.lst", "menu")):
        text = t.read_text(path)
        if text is not None:
            menus[path] = (kind, text)
    if "/boot/grub/grub.cfg" not in menus:
        raise BadInput("--default-kernel: the image has no /boot/grub/grub.cfg to boot it from")
    kind, text = menus["/boot/grub/grub.cfg"]
    found = first_entry(text, kind)
    if found is None:
        raise BadInput("--default-kernel: the image's grub.cfg has no /boot/vmlinuz-* entry")
    k = boot.kernel
    t.put_file(k.vmlinuz, t.resolve(f"/boot/vmlinuz-{k.release}"))
    notes = [f"kernel: /boot/vmlinuz-{k.release}"]
    if found[3]:  # the image boots with an initrd: one generated for this kernel
        from builder.build import ramdisk as ramdisk_mod

        initrd = ramdisk_mod.build_generated(k, boot.work / f"initrd.img-{k.release}")
        t.put_file(initrd, t.resolve(f"/boot/initrd.img-{k.release}"))
        notes.append(f"initrd: /boot/initrd.img-{k.release} (generated for it)")
    for path, (kind, text) in menus.items():
        if first_entry(text, kind) is None:
            continue
        out = boot.work / f"menu-{posixpath.basename(path)}"
        out.write_text(with_default_entry(text, kind, k.release))
        t.put_file(out, t.resolve(path))
        notes.append(f"{path}: first entry boots {k.release}")
    return notes


class DefaultRamdisk(Step[AddModules]):
    """With --default-kernel, the ramdisk to boot it with: the generated one registered for
    that AKI, else one built now, when the source boots with a ramdisk at all."""

    name = "ramdisk"

    def run(self, s: AddModules) -> None:
        if not s.default_kernel or not s.source.ramdisk_id or _hvm(s):
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
        if s.default_kernel and _hvm(s):  # its own GRUB boots this kernel now
            launch.kernel_release = release
        pv_default = s.default_kernel and not _hvm(s)
        reg = factory.Registration.of(src)
        reg = factory.Registration(
            s.name, reg.virtualization, reg.root_device_name, reg.architecture,
            s.aki.image_id if pv_default else reg.kernel_id,
            (s.ari.image_id if s.ari else None) if pv_default else reg.ramdisk_id,
        )  # fmt: skip
        first = next(iter(src.locations), "raw")
        extra = {**src.extra, "source_image_id": src.image_id,
                 "added_modules": [*src.extra.get("added_modules", []), release],
                 "added_modules_from": s.aki.image_id, "add_modules_notes": s.notes}  # fmt: skip
        if s.rebuilt is not None:
            extra[RECORD_KEY] = [
                *src.extra.get(RECORD_KEY, []),
                *(m.record(_store(s, m.copy, m.digest, ".ko")) for m in s.rebuilt.modules),
            ]
        rec = factory.machine_image(
            reg, digest, launch, locations,
            description=src.description,
            image_location=locations.get(first, locations["raw"]),
            instance_store=src.root_device_type == "instance-store",
            extra=extra,
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
