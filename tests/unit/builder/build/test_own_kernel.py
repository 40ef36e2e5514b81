"""register-kernel's files: bzImage headers, modules trees and tarballs, .debs; hostile input.

Real kernels from the shared cache (bookworm's one-.deb cloud kernel, bullseye's for a tree of
another release, sid's split packages) stand in for a kernel build. Trees for the layout
checks are small real ones: a few of bookworm's modules with its modules.builtin/order.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.build import bzimage, own_kernel
from builder.build import kernel as kernel_mod
from builder.errors import BadInput
from builder.images import factory
from builder.images.records import KernelSettings
from builder.images.registry import Registry
from tests.conftest import run_amilab

SOME_MODULES = ("virtio_blk", "virtio_net", "ext4", "xen-blkfront", "nvme")


@pytest.fixture(scope="module")
def bookworm() -> kernel_mod.Kernel:
    return kernel_mod.resolve_kernel(kernel_mod.definition("debian-cloud-bookworm"))


@pytest.fixture(scope="module")
def bullseye() -> kernel_mod.Kernel:
    return kernel_mod.resolve_kernel(kernel_mod.definition("debian-cloud-bullseye"))


@pytest.fixture(scope="module")
def sid() -> kernel_mod.Kernel:
    return kernel_mod.resolve_kernel(kernel_mod.definition("debian-cloud-sid"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AMILAB_HOME", str(home))
    return home


def small_tree(k: kernel_mod.Kernel, dest: Path) -> Path:
    """dest/<release>/: a few of the kernel's real modules, as modules_install leaves them."""
    tree = dest / k.release
    for name in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        (tree).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(k.modules_dir / name, tree / name)
    dep = (k.modules_dir / "modules.dep").read_text().splitlines()
    for line in dep:
        rel = line.split(":", 1)[0]
        if Path(rel).name.split(".ko")[0] in SOME_MODULES:
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(k.modules_dir / rel, tree / rel)
    (tree / "build").symlink_to("/usr/src/linux-headers-somewhere")  # as modules_install does
    return tree


def nothing_stored(home: Path) -> bool:
    db = home / "registry.sqlite"
    rows = 0
    if db.exists():
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    store = home / own_kernel.STORE
    return rows == 0 and (not store.exists() or not os.listdir(store))


# ------------------------------------------------------------------------------ bzImage


def test_release_from_a_real_bzimage(bookworm: kernel_mod.Kernel, tmp_path: Path) -> None:
    assert bzimage.release_of_file(bookworm.vmlinuz) == bookworm.release
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + b"\0" * 5000)
    with pytest.raises(BadInput, match="not a bzImage"):
        bzimage.release_of_file(elf)
    head = bytearray(bookworm.vmlinuz.read_bytes()[:0x1000])
    head[0x1FE:0x200] = b"\0\0"  # the header without the boot flag: not a kernel image
    (tmp_path / "half").write_bytes(bytes(head))
    with pytest.raises(BadInput, match="not a bzImage"):
        bzimage.release_of_file(tmp_path / "half")


# ------------------------------------------------------------------- files and layouts


def test_modules_install_layout_registers_and_reads_back(
    bookworm: kernel_mod.Kernel, home: Path, tmp_path: Path
) -> None:
    small_tree(bookworm, tmp_path / "X/lib/modules")
    stored = own_kernel.store_files(bookworm.vmlinuz, tmp_path / "X", bookworm.config)
    rec = own_kernel.register(stored, "mine")
    assert rec.image_id == bookworm.aki_id  # the ID derives from the vmlinuz bytes alone
    assert rec.kernel_release == bookworm.release and rec.name == "mine"
    k = kernel_mod.kernel_for_record(Registry().get(rec.image_id))  # type: ignore[arg-type]
    assert k.release == bookworm.release and k.digest == bookworm.digest
    assert k.vmlinuz.read_bytes() == bookworm.vmlinuz.read_bytes()
    assert k.config.read_bytes() == bookworm.config.read_bytes()
    assert (k.modules_dir / "modules.dep").is_file()  # depmod ran for the stored tree
    assert "virtio_blk" in (k.modules_dir / "modules.dep").read_text()
    assert not (k.modules_dir / "build").exists()  # the source link is not part of it
    assert k.ramdisk_modules == kernel_mod.definition("debian-cloud").ramdisk_modules
    assert k.modules_dir.is_relative_to(home / own_kernel.STORE)
    assert not [p for p in (home / own_kernel.STORE).iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("layout", ["release-dir", "tar-install", "tar-release", "none"])
def test_other_layouts(
    bookworm: kernel_mod.Kernel, home: Path, tmp_path: Path, layout: str
) -> None:
    src = small_tree(bookworm, tmp_path / "X/lib/modules")
    modules: Path | None
    if layout == "release-dir":
        modules = src
    elif layout == "none":
        modules = None
    else:
        modules = tmp_path / "modules.tar.gz"
        top = tmp_path / "X" if layout == "tar-install" else src.parent
        with tarfile.open(modules, "w:gz") as tar:
            for p in sorted(top.iterdir()):
                tar.add(p, arcname=p.name)
    stored = own_kernel.store_files(bookworm.vmlinuz, modules)
    k = kernel_mod.kernel_for_record(own_kernel.register(stored))
    assert k.release == bookworm.release
    assert ("virtio_blk" in (k.modules_dir / "modules.dep").read_text()) == (layout != "none")
    assert k.config.is_file()  # a placeholder when no config was given


def test_deb_gives_the_same_aki_as_its_files(
    bookworm: kernel_mod.Kernel, home: Path, tmp_path: Path
) -> None:
    assert bookworm.deb is not None
    from_deb = own_kernel.register(own_kernel.store_debs([bookworm.deb]))
    assert from_deb.image_id == bookworm.aki_id and from_deb.kernel_release == bookworm.release
    assert from_deb.package_version == bookworm.version
    assert from_deb.kernel_settings.package == bookworm.package
    k = kernel_mod.kernel_for_record(from_deb)
    assert k.modules_dir.is_relative_to(home / own_kernel.STORE)
    assert (k.modules_dir / "modules.dep").stat().st_size > 1000
    # the files of the same package: the same bytes, so the same (already registered) AKI
    small_tree(bookworm, tmp_path / "X/lib/modules")
    again = own_kernel.register(own_kernel.store_files(bookworm.vmlinuz, tmp_path / "X"))
    assert again.image_id == from_deb.image_id


def test_split_kernel_debs_together(sid: kernel_mod.Kernel, home: Path) -> None:
    image = [d for d in sid.debs if d.name.startswith("linux-image-")]
    with pytest.raises(BadInput, match="holds no kernel.*split kernel"):
        own_kernel.store_debs(image)
    assert nothing_stored(home)
    rec = own_kernel.register(own_kernel.store_debs(list(sid.debs)))
    assert rec.image_id == sid.aki_id and rec.kernel_release == sid.release
    k = kernel_mod.kernel_for_record(rec)
    assert k.vmlinuz.name == "vmlinuz" and k.release == sid.release


def test_kernel_for_record_with_its_files_gone(bookworm: kernel_mod.Kernel, home: Path) -> None:
    rec = own_kernel.register(own_kernel.store_files(bookworm.vmlinuz))
    shutil.rmtree(home / own_kernel.STORE / bookworm.digest)
    with pytest.raises(BadInput, match="are gone"):
        kernel_mod.kernel_for_record(rec)


def test_kernel_for_record_of_a_catalogue_aki(bookworm: kernel_mod.Kernel, home: Path) -> None:
    rec = factory.content_image(
        bookworm.digest, "k", str(bookworm.vmlinuz),
        KernelSettings(definition="debian-cloud-bookworm", package=bookworm.package),
        release=bookworm.release, version=bookworm.version,
    )  # fmt: skip
    assert kernel_mod.kernel_for_record(rec) == bookworm
    pv_grub = factory.content_image("f" * 64, "g", "/x", KernelSettings(pv_grub=True))
    with pytest.raises(BadInput, match="PV-GRUB"):
        kernel_mod.kernel_for_record(pv_grub)


# ------------------------------------------------------------------------ hostile input


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, link
    return m


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil.ko"),
        _member("lib/modules/../../../evil.ko"),
        _member("/lib/modules/evil.ko"),
        _member("lib/modules/x/escape", tarfile.SYMTYPE, "../../../../etc/passwd"),
        _member("lib/modules/x/abs", tarfile.SYMTYPE, "/etc/passwd"),
        _member("lib/modules/x/hard", tarfile.LNKTYPE, "../etc/passwd"),
        _member("lib/modules/x/dev", tarfile.CHRTYPE),
        _member("lib/modules/x/fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: m.name,
)
def test_hostile_tarballs_are_refused(
    bookworm: kernel_mod.Kernel, home: Path, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    tarball = _tar_with(tmp_path / "m.tar", member)
    with pytest.raises(BadInput, match="m.tar: (member|link)"):
        own_kernel.store_files(bookworm.vmlinuz, tarball)
    assert nothing_stored(home)
    assert not (tmp_path.parent / "evil.ko").exists()


def test_link_leaving_a_tree_is_refused(
    bookworm: kernel_mod.Kernel, home: Path, tmp_path: Path
) -> None:
    tree = small_tree(bookworm, tmp_path / "X/lib/modules")
    (tree / "kernel" / "sneaky.ko").symlink_to("/etc/shadow")
    with pytest.raises(BadInput, match="leaves the tree"):
        own_kernel.store_files(bookworm.vmlinuz, tmp_path / "X")
    assert nothing_stored(home)


def _deb(tmp_path: Path, files: dict[str, bytes], name: str = "linux-image-9.9.9-own") -> Path:
    root = tmp_path / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n"
    )
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    out = tmp_path / f"{name}_1_amd64.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "-b", str(root), str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return out


def test_hostile_input_through_the_cli(
    bookworm: kernel_mod.Kernel, bullseye: kernel_mod.Kernel, home: Path, tmp_path: Path
) -> None:
    """Each: exit 2, one line, nothing registered, nothing stored."""
    not_kernel = tmp_path / "bzImage"
    not_kernel.write_bytes(b"MZ" + b"\0" * 4096)
    small_tree(bullseye, tmp_path / "Y/lib/modules")
    docs_only = _deb(tmp_path, {"usr/share/doc/linux-image-9.9.9-own/README": b"hi"})
    bad_vmlinuz = _deb(tmp_path / "b", {"boot/vmlinuz-9.9.9-own": b"junk",
                                        "lib/modules/9.9.9-own/modules.order": b""})  # fmt: skip
    abs_tar = _tar_with(tmp_path / "abs.tar", _member("/etc/cron.d/x"))
    cases = [
        (["--vmlinuz", str(not_kernel)], "not a bzImage"),
        (["--vmlinuz", str(bookworm.vmlinuz), "--modules", str(tmp_path / "Y")],
         f"modules tree for {bullseye.release}, but the kernel is {bookworm.release}"),
        (["--vmlinuz", str(bookworm.vmlinuz), "--modules", str(abs_tar)], "outside"),
        (["--deb", str(docs_only)], "holds no kernel"),
        (["--deb", str(bad_vmlinuz)], "not a bzImage"),
        (["--deb", str(not_kernel)], "not a Debian package"),
        (["--vmlinuz", str(tmp_path / "nope")], "no such kernel file"),
        (["--vmlinuz", str(bookworm.vmlinuz), "--modules", str(tmp_path / "nope")], "no such"),
        (["--deb", str(tmp_path / "nope.deb")], "no such Debian package"),
        ([], "needs --vmlinuz FILE or --deb FILE"),
    ]  # fmt: skip
    for args, message in cases:
        res = run_amilab("register-kernel", *args, env={"AMILAB_HOME": str(home)}, timeout=120)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
        assert res.stdout == ""
        assert nothing_stored(home), args


def test_cli_json_is_the_describe_images_shape(bookworm: kernel_mod.Kernel, home: Path) -> None:
    import json

    res = run_amilab("register-kernel", "--vmlinuz", str(bookworm.vmlinuz), "--json",
                     env={"AMILAB_HOME": str(home)}, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (image,) = json.loads(res.stdout)["Images"]
    assert image["ImageId"] == bookworm.aki_id and image["ImageType"] == "kernel"
    assert image["KernelRelease"] == bookworm.release
    plain = run_amilab("register-kernel", "--vmlinuz", str(bookworm.vmlinuz),
                       env={"AMILAB_HOME": str(home)}, timeout=120)  # fmt: skip
    assert plain.stdout.strip() == bookworm.aki_id


def test_a_recipe_names_a_registered_kernel(
    bookworm: kernel_mod.Kernel, home: Path, tmp_path: Path
) -> None:
    """`kernel: aki-…` of a register-kernel AKI resolves to its stored files; once they are
    gone the recipe error says so at the kernel key."""
    from builder.build.pipeline import resolve_kernel_ref, validate
    from builder.build.recipe import load_recipes
    from builder.errors import RecipeError

    rec = own_kernel.register(own_kernel.store_files(bookworm.vmlinuz))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "images:\n  - name: own\n    elements: [ec2-base]\n"
        f"    kernel: {rec.image_id}\n    virtualization: paravirtual\n"
    )
    (loaded,) = load_recipes(recipe)
    validate(loaded)
    k = resolve_kernel_ref(loaded, tmp_path / "kernel.log")
    assert k.aki_id == rec.image_id and k.release == bookworm.release
    shutil.rmtree(home / own_kernel.STORE / bookworm.digest)
    with pytest.raises(RecipeError, match="kernel: .*are gone"):
        resolve_kernel_ref(loaded, tmp_path / "kernel.log")
