"""The build pipeline: recipe → rootfs → kernel/modules/ramdisk → disk → formats → registry.

Like Packer's builders, a build is a list of steps; each step that creates something owns
its cleanup, and every cleanup of the steps that ran is called in reverse order whether the
build succeeded, failed or was interrupted. Registration is the last step and one SQLite
transaction, so a build that did not finish registers nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder import paths
from builder.build import bootloader, chroot, elements, inputs, out_of_tree, reproducible, rootfs
from builder.build import kernel as kernel_mod
from builder.build import layout as disk_mod
from builder.build.arch import of as arch_of
from builder.build.engines import RootEngine, engine_for
from builder.build.kernel_catalogue import load_catalogue
from builder.build.recipe import LoadedRecipe, load_recipes, select
from builder.children import ending_with_us
from builder.disk.formats import FORMATS
from builder.errors import BadInput, BuildFailed
from builder.ids import file_sha256, sparse_sha256
from builder.images import factory
from builder.images.records import KernelSettings, LaunchSettings, Partition, RamdiskSettings
from builder.images.registry import ImageRecord, Registry, store_artifact
from builder.progress import Stages
from builder.signals import sigterm_as_interrupt
from builder.state import workarea
from builder.state.diskfull import allocated, require_space
from builder.steps import Step, run_steps


@dataclass
class BuildState:
    loaded: LoadedRecipe
    stages: Stages
    workdir: Path = Path()
    logs: Path = Path()
    root: Path = Path()
    elements: list[elements.Element] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    uninstall: list[str] = field(default_factory=list)
    kernel_future: Future[Any] | None = None
    resolved_kernel: Any = None
    ramdisk: Path | None = None
    layout: disk_mod.DiskLayout | None = None
    raw: Path = Path()
    outputs: dict[str, Path] = field(default_factory=dict)
    stored: list[Path] = field(default_factory=list)
    records: list[ImageRecord] = field(default_factory=list)
    base_cached: bool = False
    root_uuid: str = ""
    epoch: int = 0  # the build epoch: every time that reaches the disk (reproducible.py)
    inputs: inputs.BuildInputs | None = None  # what went in (builder.build.inputs)
    installed: dict[str, str] = field(default_factory=dict)  # package -> version in the tree
    keep: Path | None = None  # --verify: the tree and raw disk are moved here, not registered
    engine: RootEngine = field(init=False)  # the recipe's root engine (builder.build.engines)
    headers: Any = None  # the kernel's header packages, when out-of-tree modules are built
    out_of_tree: list[out_of_tree.BuiltModule] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = engine_for(self.recipe.engine)

    @property
    def kernel(self) -> Any:
        """The recipe's kernel; resolved (and on a cold cache, downloaded) in the background
        while the base root tree is made, and waited for only where first needed."""
        if self.resolved_kernel is None and self.kernel_future is not None:
            self.resolved_kernel = self.kernel_future.result()
        return self.resolved_kernel

    @property
    def recipe(self):  # noqa: ANN201 - the Recipe dataclass
        return self.loaded.recipe

    def hook_env(self) -> dict[str, str]:
        r = self.recipe
        return {
            **r.environment,
            "DIB_RELEASE": r.release,
            "DISTRO_NAME": "debian",
            "DIB_INIT_SYSTEM": "systemd",
            "ARCH": arch_of(r.architecture).deb,
            "IMAGE_NAME": r.name,
            "IMAGE_ELEMENT": " ".join(e.name for e in self.elements),
            "ELEMENTS_PATH": ":".join(str(p) for p in paths.elements_path()),
            "AMILAB_KERNEL_RELEASE": self.kernel.release if self.kernel else "",
            # tools run by hooks (shadow's, dpkg's, mkinitramfs) date what they write by it
            reproducible.EPOCH_VARIABLE: str(self.epoch),
        }


class Workdir(Step[BuildState]):
    name = "workdir"

    def run(self, s: BuildState) -> None:
        s.workdir = workarea.new_dir(s.recipe.name)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        s.logs = paths.logs_dir() / f"{s.recipe.name}-{stamp}-{s.workdir.name[-6:]}"
        s.logs.mkdir(parents=True, exist_ok=True)
        scratch = paths.scratch_dir()
        if scratch:
            s.root = workarea.new_dir(f"amilab-{s.recipe.name}", scratch)
        else:
            s.root = s.workdir / "root"

    def cleanup(self, s: BuildState) -> None:
        chroot.remove_tree(s.root)
        chroot.remove_tree(s.workdir)


class Resolve(Step[BuildState]):
    name = "resolve"
    what = "elements, packages and kernel"

    def run(self, s: BuildState) -> None:
        r = s.recipe
        s.elements = elements.resolve(r.elements, paths.elements_path(), s.loaded.where)
        installs = elements.package_installs(s.elements, r.architecture)
        wanted = list(rootfs.BASE_PACKAGES) + list(r.packages)
        wanted += [p.name for p in installs if not p.uninstall]
        if r.ramdisk == "distro":
            wanted.append("initramfs-tools")
        s.packages = sorted(set(wanted))
        s.uninstall = sorted({p.name for p in installs if p.uninstall})
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")
        s.kernel_future = self._pool.submit(resolve_kernel_ref, s.loaded, s.logs / "kernel.log")
        # out-of-tree modules: the headers' dependencies (the compiler) go into the base tree,
        # so the kernel is waited for here rather than beside mmdebstrap
        if extra := out_of_tree.packages_for(s):
            s.packages = sorted(set(s.packages) | set(extra))
        s.root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"amilab:{r.digest}"))

    _pool: ThreadPoolExecutor | None = None

    def cleanup(self, s: BuildState) -> None:
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)


class BaseRoot(Step[BuildState]):
    name = "rootfs"

    def run(self, s: BuildState) -> None:
        s.engine.make_root(s)
        s.epoch = reproducible.build_epoch(s.root)
        s.stages.detail(f"build epoch {s.epoch}")


class Elements(Step[BuildState]):
    """Element phases up to post-install.d, where the engine leaves them to amilab's runner
    (diskimage-builder ran them all while making the tree)."""

    name = "elements"

    def run(self, s: BuildState) -> None:
        s.engine.run_elements(s)

    def cleanup(self, s: BuildState) -> None:
        s.engine.cleanup(s)


class Modules(Step[BuildState]):
    name = "modules"

    def run(self, s: BuildState) -> None:
        release = s.kernel.release
        dest = s.root / "lib/modules" / release
        if s.recipe.modules == "omit":
            s.stages.detail(f"leaving out /lib/modules/{release} (modules: omit)")
            return
        s.stages.detail(f"/lib/modules/{release}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ending_with_us(["cp", "-a", str(s.kernel.modules_dir), str(dest)]), check=True
        )
        boot = s.root / "boot"
        boot.mkdir(exist_ok=True)
        shutil.copy2(s.kernel.config, boot / f"config-{release}")
        subprocess.run(["depmod", "-b", str(s.root), release], check=True)


class OutOfTree(Step[BuildState]):
    """dkms and extra-modules, built in the image for its kernel (builder.build.out_of_tree)."""

    name = "out-of-tree"
    what = "modules"

    def run(self, s: BuildState) -> None:
        if s.recipe.dkms or s.recipe.extra_modules:
            s.out_of_tree = out_of_tree.build(s)
            s.stages.detail(", ".join(f"{m.name} {m.version}" for m in s.out_of_tree))


class Ramdisk(Step[BuildState]):
    name = "ramdisk"

    def run(self, s: BuildState) -> None:
        from builder.build import ramdisk as ramdisk_mod

        kind = s.recipe.ramdisk
        out = s.workdir / "initrd.img"
        if kind == "generated":
            s.stages.detail("busybox initrd with " + ", ".join(s.kernel.ramdisk_modules))
            s.ramdisk = ramdisk_mod.build_generated(s.kernel, out)
        elif kind == "distro":
            s.stages.detail("mkinitramfs in the image")
            with chroot.prepared(s.root):
                s.ramdisk = ramdisk_mod.build_distro(s.root, s.kernel, out, s.logs / "ramdisk.log")


class Finalise(Step[BuildState]):
    name = "finalise"

    def run(self, s: BuildState) -> None:
        s.engine.finalise(s)
        # Empty, as Debian's cloud images ship it: systemd makes a fresh ID at every boot
        # of a new instance. ("uninitialized" would also trigger first-boot preset-all,
        # measured at 5.6 s under TCG.)
        machine_id = s.root / "etc/machine-id"
        if machine_id.exists():
            machine_id.write_text("")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            d = s.root / junk
            if d.is_dir():
                for f in d.glob("*"):
                    if f.is_file() and f.name != "lock":
                        f.unlink()
        disk_mod.write_fstab(s.root, s.recipe.disk.label)
        s.installed = inputs.installed_packages(s.root, s.recipe.architecture)
        reproducible.normalise_tree(s.root, s.epoch)


class BootFiles(Step[BuildState]):
    """HVM: the kernel, initrd and GRUB menus go into the image's /boot."""

    name = "boot-files"

    def run(self, s: BuildState) -> None:
        if s.recipe.virtualization != "hvm":
            return
        k = s.kernel
        s.stages.detail(f"/boot/vmlinuz-{k.release}, grub.cfg, menu.lst")
        roles = disk_mod.plan(s.recipe.partitioning, s.recipe.boot_mode)
        bootloader.install_boot_files(
            s.root,
            Path(k.vmlinuz),
            Path(k.config),
            k.release,
            s.ramdisk,
            bootloader.kernel_args(s.root_uuid, k.cmdline, s.recipe.kernel_cmdline),
            roles.index("root") + 1,
            s.recipe.architecture,
        )


class Disk(Step[BuildState]):
    name = "disk"

    def run(self, s: BuildState) -> None:
        d = s.recipe.disk
        s.raw = s.workdir / "disk.raw"
        s.stages.detail(f"mkfs.ext4 -d ({s.recipe.partitioning}, {d.size >> 20} MiB)")
        s.layout = disk_mod.make_disk(
            s.root,
            s.raw,
            d.size,
            d.label,
            s.root_uuid,
            s.recipe.partitioning,
            s.logs / "disk.log",
            boot=s.recipe.boot_mode,
            epoch=s.epoch,
        )
        # the tree is in the disk now; free the space before writing formats (--verify
        # keeps it to say which files differ)
        if s.keep is None:
            chroot.remove_tree(s.root)


class Bootloader(Step[BuildState]):
    name = "bootloader"

    def run(self, s: BuildState) -> None:
        if s.layout is None or s.layout.boot is None:
            return
        s.stages.detail(f"GRUB for {s.layout.boot}")
        bootloader.install(
            s.raw, s.layout, s.root_uuid, s.workdir, s.logs / "bootloader.log", s.epoch,
            s.recipe.architecture,
        )  # fmt: skip


class Formats(Step[BuildState]):
    name = "formats"

    def run(self, s: BuildState) -> None:
        for name in s.recipe.disk.formats:
            fmt = FORMATS[name]
            if name == "raw":
                s.outputs[name] = s.raw
                continue
            s.stages.detail(name)
            out = s.workdir / f"disk{fmt.suffix}"
            fmt.write(s.raw, out)
            s.outputs[name] = out


class Register(Step[BuildState]):
    name = "register"

    def run(self, s: BuildState) -> None:
        r, k, layout = s.recipe, s.kernel, s.layout
        assert layout is not None
        kernel_path = self._store(s, Path(k.vmlinuz), k.digest, ".vmlinuz", copy=True)
        records = [
            factory.content_image(
                k.digest, f"{k.name}-{k.release}", str(kernel_path),
                KernelSettings(definition=k.name, package=k.package, cmdline=k.cmdline),
                release=k.release, version=k.version, description=f"{k.package} {k.version}",
                architecture=k.architecture,
            )  # fmt: skip
        ]
        ari_id, ari = None, None
        if s.ramdisk:
            digest = file_sha256(s.ramdisk)
            path = self._store(s, s.ramdisk, digest, ".initrd")
            ari = factory.content_image(
                digest, f"initrd-{k.release}-{r.ramdisk}", str(path),
                RamdiskSettings(kind=r.ramdisk, built_for=k.aki_id), release=k.release,
                architecture=k.architecture,
                description=f"{r.ramdisk} ramdisk for {k.release}",
            )  # fmt: skip
            records.append(ari)
            ari_id = ari.image_id
        s.stages.detail("digest of the disk")
        disk_digest = sparse_sha256(s.raw)
        locations = {}
        for name, path in s.outputs.items():
            digest = disk_digest if name == "raw" else file_sha256(path)
            locations[name] = str(self._store(s, path, digest, FORMATS[name].suffix))
        pv = r.virtualization == "paravirtual"
        registration = factory.Registration(
            r.name,
            r.virtualization,
            layout.root_device_name,
            r.architecture,
            kernel_id=k.aki_id if pv else None,
            ramdisk_id=ari_id if pv else None,
        )
        ami = factory.machine_image(
            registration,
            disk_digest,
            self._launch(layout, r.kernel_cmdline, k.release),
            locations,
            description=r.description,
            image_location=locations[r.disk.formats[0]],
            extra={
                inputs.RECORD_KEY: self._inputs(s, k.digest, ari and ari.digest),
                "recipe_digest": r.digest,
                "recipe": asdict(r),
                "recipe_file": s.loaded.where.path,
                "engine": r.engine,
                "build_kernel_id": k.aki_id,
                "build_ramdisk_id": ari_id,
                "modules": r.modules,
                out_of_tree.RECORD_KEY: [
                    m.record(self._store(s, m.copy, m.digest, ".ko")) for m in s.out_of_tree
                ],
                "logs": str(s.logs),
                "timings": s.stages.timings,
            },
        )
        records.append(ami)
        registry = Registry()
        s.records = registry.register(records)
        kept = next(r for r in s.records if r.image_type == "machine")
        if kept is not ami:  # the same disk was registered before, from other inputs
            inputs.add_inputs(registry, kept, ami.extra[inputs.RECORD_KEY]["InputsDigest"])

    @staticmethod
    def _inputs(s: BuildState, kernel_digest: str, ramdisk_digest: str | None) -> dict[str, Any]:
        """What went in (describe-images shows it as `amilab:BuildInputs`)."""
        i = s.inputs
        assert i is not None
        return {
            "InputsDigest": i.digest,
            "RecipeDigest": i.recipe_digest,
            "Engine": i.engine,
            "ElementsDigest": i.elements_digest,
            "Kernel": i.kernel,
            "KernelDigest": kernel_digest,
            "RamdiskDigest": ramdisk_digest,
            "PackageIndexDigest": i.package_index,
            "Packages": [f"{n}={v}" for n, v in s.installed.items()],
            "BuildEpoch": s.epoch,
        }

    @staticmethod
    def _launch(layout: disk_mod.DiskLayout, cmdline: str, release: str) -> LaunchSettings:
        return LaunchSettings(
            disk_size=layout.size,
            partitioning=layout.partitioning,
            partitions={k: Partition(o, n) for k, (o, n) in layout.parts.items()},
            fs_offset=layout.fs_offset,
            root_label=layout.label,
            root_uuid=layout.uuid,
            root_partuuid=layout.partuuid,
            boot=layout.boot,
            kernel_release=release,
            kernel_cmdline=cmdline,
        )

    def _store(
        self, s: BuildState, path: Path, digest: str, suffix: str, copy: bool = False
    ) -> Path:
        dest_exists = (paths.artifacts_dir() / digest[:2] / f"{digest}{suffix}").exists()
        if copy and not dest_exists:
            tmp = s.workdir / f"artifact{suffix}"
            shutil.copy2(path, tmp)
            path = tmp
        elif copy:
            return paths.artifacts_dir() / digest[:2] / f"{digest}{suffix}"
        dest = store_artifact(path, digest, suffix)
        if not dest_exists:
            s.stored.append(dest)
        return dest

    def cleanup(self, s: BuildState) -> None:
        if not s.records:  # registration did not happen: drop what only it would have used
            for path in s.stored:
                path.unlink(missing_ok=True)


PIPELINE: tuple[type[Step[BuildState]], ...] = (
    Workdir,
    Resolve,
    BaseRoot,
    Elements,
    Modules,
    OutOfTree,
    Ramdisk,
    BootFiles,
    Finalise,
    Disk,
    Bootloader,
    Formats,
    Register,
)


def resolve_kernel_ref(loaded: LoadedRecipe, log: Path) -> Any:
    """The recipe's kernel: a catalogue name, or an aki- ID registered earlier."""
    r, where = loaded.recipe, loaded.where
    catalogue = load_catalogue()
    if r.kernel.startswith("aki-"):
        record = Registry().get(r.kernel)
        if record is None or record.image_type != "kernel":
            raise where.error("kernel", f"{r.kernel} is not a registered kernel image")
        try:
            return kernel_mod.kernel_for_record(record, log)
        except (BadInput, BuildFailed) as e:  # the catalogue or the stored files changed
            raise where.error("kernel", f"{r.kernel}: {e}") from None
    if r.kernel not in catalogue:
        raise where.error(
            "kernel", f"unknown kernel {r.kernel!r}; known: {', '.join(sorted(catalogue))}"
        )
    return kernel_mod.resolve_kernel(catalogue[r.kernel], r.release, log=log)


def validate(loaded: LoadedRecipe) -> None:
    """Checks that need more than the recipe file: elements and kernel names exist."""
    r, where = loaded.recipe, loaded.where
    found = elements.resolve(r.elements, paths.elements_path(), where)
    elements.package_installs(found, r.architecture)
    out_of_tree.validate(loaded)
    if r.kernel.startswith("aki-"):
        return
    catalogue = load_catalogue()
    if r.kernel not in catalogue:
        known = ", ".join(sorted(catalogue))
        raise where.error("kernel", f"unknown kernel {r.kernel!r}; known: {known}")
    # the image's own kernel goes into its tree (modules, /boot): it must be of its
    # architecture; booting another is `smoke --kernel`'s to try
    if (kernel_arch := catalogue[r.kernel].architecture) != r.architecture:
        same = sorted(n for n, d in catalogue.items() if d.architecture == r.architecture)
        raise where.error(
            "kernel",
            f"{r.kernel} is an {kernel_arch} kernel and this image is {r.architecture}; "
            f"{r.architecture} kernels: {', '.join(same) or 'none'}",
        )


class Keep(Step[BuildState]):
    """--verify: instead of registering, keep the raw disk and the tree for comparison."""

    name = "keep"

    def run(self, s: BuildState) -> None:
        assert s.keep is not None
        s.keep.mkdir(parents=True, exist_ok=True)
        os.rename(s.raw, s.keep / "disk.raw")
        try:
            os.rename(s.root, s.keep / "root")
        except OSError:  # the tree is on the memory-backed scratch: it stays there, renamed
            kept = s.root.with_name(s.root.name + "-kept")
            os.rename(s.root, kept)
            (s.keep / "root").symlink_to(kept)


@dataclass(frozen=True)
class Built:
    image: ImageRecord
    cached: bool  # an earlier build of the same inputs registered it: nothing was built


def run_pipeline(loaded: LoadedRecipe, state_inputs: inputs.BuildInputs, quiet: bool,
                 keep: Path | None = None) -> BuildState:  # fmt: skip
    """The steps for one recipe; with `keep`, Keep instead of Register (nothing registered)."""
    steps = PIPELINE if keep is None else (*PIPELINE[:-1], Keep)
    with Stages(loaded.recipe.name, quiet=quiet) as stages:
        state = BuildState(loaded, stages)
        state.inputs, state.keep = state_inputs, keep
        run_steps(
            (step_cls() for step_cls in steps),
            state,
            around=lambda step: stages.stage(step.name, step.what),
        )
    return state


def build_recipe(loaded: LoadedRecipe, quiet: bool = False) -> Built:
    """The registered AMI of the recipe: the one an earlier build of the same inputs
    registered (nothing built, nothing stored), else a new build's."""
    found = inputs.of_recipe(loaded)
    cached = inputs.registered(found)
    if cached is not None:
        if not quiet:
            print(
                f"[{loaded.recipe.name}] unchanged inputs ({found.digest[:12]}): "
                f"{cached.image_id} is already registered",
                file=sys.stderr,
            )
        return Built(cached, True)
    require_space(paths.work_root(), space_needed(loaded.recipe), f"the image {loaded.recipe.name}")
    state = run_pipeline(loaded, found, quiet)
    return Built(next(r for r in state.records if r.image_type == "machine"), False)


def space_needed(recipe: Any) -> int:
    """What a build of `recipe` writes under the work root at least, known before it starts:
    each format of a disk that holds at least the smallest cached base tree of its release
    (else 256 MiB; never more than the disk), plus the kernel and ramdisk. The Disk step
    checks again with the tree it made."""
    bases = (paths.cache_dir() / "rootfs").glob(f"{recipe.release}-*.tar")
    tree = min((allocated(b) for b in bases), default=256 << 20)
    return min(tree, recipe.disk.size) * len(recipe.disk.formats) + (64 << 20)


def chosen_recipes(path: Path, image: str | None = None) -> list[LoadedRecipe]:
    """The recipes of `path` (or the one named `image`), all validated."""
    chosen = select(load_recipes(path), image)
    for loaded in chosen:
        validate(loaded)
    return chosen


def build_all(path: Path, image: str | None = None, quiet: bool = False) -> list[Built]:
    """Build every recipe in `path` (or the one named `image`); all are validated first."""
    chosen = chosen_recipes(path, image)
    with sigterm_as_interrupt():
        return [build_recipe(loaded, quiet=quiet) for loaded in chosen]


def build_file(path: Path, image: str | None = None, quiet: bool = False) -> list[ImageRecord]:
    """`build_all`'s AMI records."""
    return [b.image for b in build_all(path, image, quiet)]
