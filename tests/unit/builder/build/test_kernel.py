"""Kernel catalogue validation and resolution logic, without network (apt is faked)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from builder.build import apt_index, deb_control, kernel, kernel_catalogue, kernel_tree
from builder.build.apt_index import PrivateApt
from builder.build.kernel import KernelDefinition
from builder.errors import BadInput, EnvironmentProblem, RecipeError

GOOD = """\
name: test-kernel
description: a test
package: linux-image-cloud-amd64
ramdisk_modules: [virtio_blk, xen-blkfront]
cmdline: console=ttyS0
"""


def write(tmp_path: Path, text: str, name: str = "k.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_catalogue_is_valid() -> None:
    cat = kernel.load_catalogue()
    assert cat["debian-cloud"].package == "linux-image-cloud-amd64"
    assert cat["debian-generic"].package == "linux-image-amd64"
    for defn in cat.values():
        assert "virtio_blk" in defn.ramdisk_modules
        # the serial console of the kernel's machine: the PL011 UART on arm64's virt
        console = "ttyAMA0" if defn.architecture == "arm64" else "ttyS0"
        assert f"console={console}" in defn.cmdline, defn.name


def test_good_definition(tmp_path: Path) -> None:
    d = kernel_catalogue.load_definition(write(tmp_path, GOOD)).definition
    assert d == KernelDefinition(
        name="test-kernel",
        description="a test",
        package="linux-image-cloud-amd64",
        ramdisk_modules=("virtio_blk", "xen-blkfront"),
        cmdline="console=ttyS0",
    )


@pytest.mark.parametrize(
    "text, line, key",
    [
        (GOOD + "flavour: x\n", 6, "flavour"),
        (GOOD.replace("[virtio_blk, xen-blkfront]", "virtio_blk"), 4, "ramdisk_modules"),
        (GOOD.replace("[virtio_blk, xen-blkfront]", "[virtio/blk]"), 4, "ramdisk_modules[0]"),
        (GOOD.replace("[virtio_blk, xen-blkfront]", "[a, a]"), 4, "ramdisk_modules[1]"),
        (GOOD.replace("package: linux-image-cloud-amd64\n", ""), 1, "package"),
        (GOOD.replace("linux-image-cloud-amd64", "Linux Image"), 3, "package"),
        (GOOD.replace("name: test-kernel", "name: [a]"), 1, "name"),
        (GOOD.replace("cmdline: console=ttyS0", "cmdline: {a: 1}"), 5, "cmdline"),
        (GOOD + "name: again\n", 6, "name"),
        ("- a\n- b\n", 1, "kernel"),
        ("", 1, "yaml"),
        ("name: [\n", 2, "yaml"),
    ],
)
def test_bad_definitions(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        kernel_catalogue.load_definition(path)
    assert e.value.exit_code == 2
    assert (e.value.line, e.value.key) == (line, key)
    assert str(e.value).startswith(f"{path}:{line}: {key}: ")
    assert "\n" not in str(e.value)


def test_duplicate_name_across_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, GOOD.replace("test-kernel", "debian-cloud"), "mine.yaml")
    monkeypatch.setenv("AMILAB_KERNELS_PATH", str(tmp_path))
    with pytest.raises(RecipeError, match=r"mine.yaml:1: name: kernel 'debian-cloud' is alr"):
        kernel.load_catalogue()


def test_unknown_kernel_and_aki_ref() -> None:
    with pytest.raises(BadInput, match="not in the catalogue; known kernels: .*debian-cloud"):
        kernel.kernel_by_ref("no-such-kernel")
    with pytest.raises(BadInput, match="registry"):
        kernel.kernel_by_ref("aki-0123456789abcdef0")


def test_parse_control_and_exact_dependency() -> None:
    text = (
        "Package: linux-image-cloud-amd64\nVersion: 6.1.99-1\n"
        "Depends: linux-image-6.1.0-99-cloud-amd64 (= 6.1.99-1)\n"
        "Description: meta\n more text\n\nPackage: other\n"
    )
    fields = deb_control.parse_control(text)
    assert fields["Version"] == "6.1.99-1"
    assert fields["Description"] == "meta\nmore text"
    assert "other" not in fields.values()
    assert deb_control.exact_dependency(fields) == "linux-image-6.1.0-99-cloud-amd64"
    signed = {"Depends": "linux-image-6.1.0-9-amd64-unsigned | linux-image-6.1.0-9-amd64, kmod"}
    assert deb_control.exact_dependency(signed) == "linux-image-6.1.0-9-amd64-unsigned"
    assert deb_control.exact_dependency({"Depends": "kmod, linux-base"}) is None


# ---------------------------------------------------------------------------------------------
# resolution against a fake apt and a synthetic kernel package

RELEASE = "6.1.0-99-test-amd64"
EXACT = f"linux-image-{RELEASE}"


def make_deb(tmp_path: Path, version: str = "6.1.99-1") -> Path:
    root = tmp_path / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {EXACT}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: t <t@example.org>\nDescription: test kernel\n"
    )
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{RELEASE}").write_bytes(b"not really a kernel")
    (root / f"boot/config-{RELEASE}").write_text("CONFIG_EXT4_FS=y\n")
    mods = root / f"lib/modules/{RELEASE}/kernel"
    mods.mkdir(parents=True)
    deb = tmp_path / f"{EXACT}_{version}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "-b", str(root), str(deb)], check=True, capture_output=True
    )
    return deb


class FakeApt:
    """Counts network operations; the index 'exists' after the first update."""

    def __init__(self, deb: Path, online: bool = True) -> None:
        self.deb = deb
        self.online = online
        self.updates = 0
        self.downloads = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        def update(self: PrivateApt, log: Path | None, attempts: int = 1) -> None:
            if not fake.online:
                raise EnvironmentProblem("apt-get update failed: offline")
            fake.updates += 1
            self.lists.mkdir(parents=True, exist_ok=True)
            (self.lists / "mirror_Packages").write_text("")
            (self.base / "state/updated").touch()

        def show(self: PrivateApt, package: str) -> dict[str, str] | None:
            if not (self.lists / "mirror_Packages").exists():
                return None
            if package == "linux-image-test-amd64":
                return {"Version": "1", "Depends": f"{EXACT} (= 6.1.99-1)"}
            return {"Version": "6.1.99-1"} if package == EXACT else None

        def download(self: PrivateApt, package: str, version: str, dest: Path, log: object) -> Path:
            fake.downloads += 1
            target = dest / fake.deb.name
            target.write_bytes(fake.deb.read_bytes())
            return target

        monkeypatch.setattr(PrivateApt, "update", update)
        monkeypatch.setattr(PrivateApt, "show", show)
        monkeypatch.setattr(PrivateApt, "download", download)
        monkeypatch.setattr(
            "builder.build.apt_index.host_mirror",
            lambda: type(
                "M", (), {"apt_lines": lambda self, r: [f"deb http://m/debian {r} main"]}
            )(),
        )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "amilab"


DEFN = KernelDefinition(name="t", package="linux-image-test-amd64", ramdisk_modules=("ext4",))


def test_resolve_downloads_once_and_then_works_offline(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeApt(make_deb(tmp_path))
    fake.install(monkeypatch)
    k = kernel.resolve_kernel(DEFN, "bookworm")
    assert (k.package, k.version, k.release) == (EXACT, "6.1.99-1", RELEASE)
    assert k.vmlinuz.read_bytes() == b"not really a kernel"
    assert k.modules_dir == cache / f"kernels/{EXACT}_6.1.99-1/lib/modules/{RELEASE}"
    assert (k.modules_dir / "modules.dep").exists()  # depmod ran on the unpacked tree
    assert k.aki_id.startswith("aki-") and len(k.aki_id) == 21
    assert (fake.updates, fake.downloads) == (1, 1)
    again = kernel.resolve_kernel(DEFN, "bookworm")
    assert again == k
    assert (fake.updates, fake.downloads) == (1, 1)  # nothing fetched, not even the index
    # an index older than a day is refreshed, but offline the cached one still serves
    stamp = cache / "apt/bookworm/state/updated"
    old = time.time() - 2 * apt_index.INDEX_MAX_AGE
    os.utime(stamp, (old, old))
    fake.online = False
    assert kernel.resolve_kernel(DEFN, "bookworm") == k
    assert fake.downloads == 1


def test_offline_without_index_is_an_environment_problem(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeApt(make_deb(tmp_path), online=False)
    fake.install(monkeypatch)
    with pytest.raises(EnvironmentProblem):
        kernel.resolve_kernel(DEFN, "bookworm")


def test_unknown_package_refreshes_once_then_is_bad_input(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeApt(make_deb(tmp_path))
    fake.install(monkeypatch)
    kernel.resolve_kernel(DEFN, "bookworm")
    missing = KernelDefinition(name="m", package="linux-image-missing")
    with pytest.raises(BadInput, match="not in the bookworm archive"):
        kernel.resolve_kernel(missing, "bookworm")
    assert fake.updates == 2  # a fresh index lacking the package is refreshed once


def test_interrupted_unpack_is_not_taken_as_complete(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeApt(make_deb(tmp_path))
    fake.install(monkeypatch)
    target = kernel_tree.kernel_dir(EXACT, "6.1.99-1")
    (target / "boot").mkdir(parents=True)  # what a crash half-way through used to leave
    with pytest.raises(Exception, match="not in the cache"):
        kernel.cached_kernel(DEFN, EXACT, "6.1.99-1")
    k = kernel.resolve_kernel(DEFN, "bookworm")
    assert k.vmlinuz.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]
    assert kernel.cached_kernel(DEFN, EXACT, "6.1.99-1") == k


def test_private_apt_options_never_name_host_state(tmp_path: Path) -> None:
    apt = PrivateApt(tmp_path / "apt", "bookworm")
    opts = " ".join(apt.options())
    for key in ("Dir::State::Lists", "Dir::State::status", "Dir::Cache::Archives"):
        assert f"{key}={tmp_path}" in opts
    assert "Dir::Etc::SourceList=" + str(tmp_path) in opts
    assert "/var/lib/apt" not in opts and "/etc/apt" not in opts
