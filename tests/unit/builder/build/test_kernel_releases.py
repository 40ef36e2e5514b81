"""Kernels by Debian release against the machine's real mirror: the shipped definitions,
what the indexes say each resolves to, and the differences between releases' packages
(one .deb or four, /boot or the modules tree, .ko or .ko.xz, drivers built in or not).

The indexes and packages land in the shared cache (XDG_CACHE_HOME), so only a machine's first
run downloads: the indexes (~10 MB a suite) and sid's and bookworm-backports' cloud kernels."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from builder.build import kernel, kernel_catalogue, kernel_tree, ramdisk
from builder.build.kernel import SUITES
from builder.errors import RecipeError
from tests.conftest import ROOT

GOOD = """\
name: test-kernel
description: a test
package: linux-image-cloud-amd64
suite: bookworm
ramdisk_modules: [virtio_blk]
"""


def test_shipped_catalogue_covers_releases() -> None:
    cat = kernel.load_catalogue()
    suites = Counter(d.suite for d in cat.values() if d.suite)
    assert len(cat) >= 12 and len(suites) >= 5, suites
    for suite in ("bullseye", "bookworm", "bookworm-backports", "trixie", "sid"):
        assert cat[f"debian-cloud-{suite}"].package == "linux-image-cloud-amd64"
        assert cat[f"debian-generic-{suite}"].package == "linux-image-amd64"
        assert cat[f"debian-cloud-{suite}"].suite == suite
    # the definitions recipes name keep following the recipe's release
    assert cat["debian-cloud"].suite == cat["debian-generic"].suite == ""
    assert kernel.suite_of(cat["debian-cloud"], "trixie") == "trixie"
    assert kernel.suite_of(cat["debian-cloud-sid"], "trixie") == "sid"


@pytest.mark.parametrize("suite", ["buster", "Bookworm", "bookworm-updates", "[sid]", "7"])
def test_unknown_suite_is_one_line_at_its_line(tmp_path: Path, suite: str) -> None:
    path = tmp_path / "k.yaml"
    path.write_text(GOOD.replace("suite: bookworm", f"suite: {suite}"))
    with pytest.raises(RecipeError) as e:
        kernel_catalogue.load_definition(path)
    assert e.value.exit_code == 2 and (e.value.line, e.value.key) == (4, "suite")
    assert str(e.value).startswith(f"{path}:4: suite: ") and "\n" not in str(e.value)
    assert "one of " + ", ".join(SUITES) in str(e.value)


def test_unknown_suite_through_the_cli_caches_nothing(tmp_path: Path) -> None:
    (tmp_path / "defs").mkdir()
    bad = tmp_path / "defs/k.yaml"
    bad.write_text(GOOD.replace("suite: bookworm", "suite: buster"))
    env = {
        "AMILAB_KERNELS_PATH": str(tmp_path / "defs"),
        "XDG_CACHE_HOME": str(tmp_path / "c"),
        "AMILAB_HOME": str(tmp_path / "home"),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    for args in (["kernels"], ["kernels", "--json"]):
        res = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and res.stdout == ""
        assert res.stderr.startswith(f"amilab: {bad}:4: suite: ")
        assert "'buster' is not allowed; allowed: one of bullseye, bookworm," in res.stderr
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------
# the real indexes


@pytest.fixture(scope="module")
def resolved() -> dict[str, kernel.Resolution]:
    cat = kernel.load_catalogue()
    return dict(zip(cat, kernel.resolve_versions(list(cat.values())), strict=True))


def test_every_shipped_kernel_resolves_from_its_suites_index(resolved: dict) -> None:
    cat = kernel.load_catalogue()
    for name, res in resolved.items():
        assert res.suite == (cat[name].suite or kernel.DEFAULT_RELEASE)
        assert re.fullmatch(r"\d+\.\d+\.\d+-\S+", res.version), res
        assert res.package == f"linux-image-{res.release}"
        other = {"i386": "686-pae", "arm64": "cloud-arm64"}.get(cat[name].architecture)
        flavour = other or ("cloud-amd64" if "cloud" in name else "amd64")
        assert res.release.endswith(f"-{flavour}") and not res.release.endswith("cloud-cloud")
    major = {s: int(resolved[f"debian-cloud-{s}"].release.split(".")[0]) for s in SUITES
             if f"debian-cloud-{s}" in resolved}  # fmt: skip
    assert major["bullseye"] == 5 and major["bookworm"] == 6 and major["sid"] >= 6
    assert "~bpo12" in resolved["debian-cloud-bookworm-backports"].version
    assert resolved["debian-cloud"] == resolved["debian-cloud-bookworm"]


def test_split_packages_are_read_from_the_index(resolved: dict) -> None:
    sid = resolved["debian-cloud-sid"]
    assert "+deb14" in sid.release
    parts = dict(sid.parts)
    for kind in ("binary", "modules"):
        assert parts[f"linux-{kind}-{sid.release}"] == sid.version
    for one_deb in ("bullseye", "bookworm", "bookworm-backports"):
        assert resolved[f"debian-cloud-{one_deb}"].parts == ()


def test_listing_is_quick_once_the_indexes_are_there(resolved: dict) -> None:
    import time

    t0 = time.monotonic()
    again = kernel.resolve_versions(list(kernel.load_catalogue().values()))
    assert again == list(resolved.values())
    assert time.monotonic() - t0 < 20  # ~3 s here; `show --no-all-versions` took ~25 s


# ---------------------------------------------------------------------------------------------
# what differs between releases' packages


def _bzimage(path: Path) -> bool:
    return path.read_bytes()[0x202:0x206] == b"HdrS"


@pytest.fixture(scope="module")
def sid() -> kernel.Kernel:
    return kernel.resolve_kernel(kernel.definition("debian-cloud-sid"))


@pytest.fixture(scope="module")
def bookworm() -> kernel.Kernel:
    return kernel.resolve_kernel(kernel.definition("debian-cloud-bookworm"))


def test_split_kernel_becomes_one_tree(sid: kernel.Kernel) -> None:
    tree = kernel_tree.kernel_dir(sid.package, sid.version)
    assert sid.vmlinuz == tree / f"usr/lib/modules/{sid.release}/vmlinuz" and _bzimage(sid.vmlinuz)
    assert sid.modules_dir == tree / f"usr/lib/modules/{sid.release}"
    assert sid.config == sid.modules_dir / "config" and "CONFIG_" in sid.config.read_text()
    assert not (tree / "boot").exists()
    assert {d.name.split("_")[0] for d in sid.debs} >= {
        f"linux-{k}-{sid.release}" for k in ("image", "binary", "modules", "base")
    }
    assert (sid.modules_dir / "modules.dep").exists()  # depmod ran on the joined tree
    assert (sid.modules_dir / "modules.builtin").exists()  # from linux-base-<release>
    assert any(sid.modules_dir.rglob("*.ko.xz")) and not any(sid.modules_dir.rglob("*.ko"))
    assert kernel.cached_kernel(kernel.definition("debian-cloud-sid"), sid.package, sid.version) \
        == sid  # fmt: skip


def test_one_deb_kernel_keeps_boot_and_lib_modules(bookworm: kernel.Kernel) -> None:
    tree = kernel_tree.kernel_dir(bookworm.package, bookworm.version)
    assert bookworm.vmlinuz == tree / f"boot/vmlinuz-{bookworm.release}"
    assert _bzimage(bookworm.vmlinuz)
    assert bookworm.modules_dir == tree / f"lib/modules/{bookworm.release}"
    assert any(bookworm.modules_dir.rglob("*.ko")) and len(bookworm.debs) == 1


def test_ramdisk_follows_each_kernels_own_builtins(
    sid: kernel.Kernel, bookworm: kernel.Kernel, tmp_path: Path
) -> None:
    """virtio_pci is a module in bookworm's cloud kernel and built into sid's: the ramdisk
    carries it for one and skips it for the other; sid's .ko.xz go in decompressed, because
    the ramdisk's /init loads them with busybox insmod, which reads plain ELF only."""
    staged = {}
    for k in (bookworm, sid):
        order = ramdisk.stage_modules(k, tmp_path / k.release)
        staged[k.release] = order
        files = list((tmp_path / k.release / "lib/modules" / k.release).rglob("*.ko*"))
        assert files and all(f.suffix == ".ko" for f in files)
        assert all(f.read_bytes()[:4] == b"\x7fELF" for f in files)
        assert sorted(str(f.relative_to(tmp_path / k.release / "lib/modules" / k.release))
                      for f in files) == sorted(order)  # fmt: skip
    names = {r: {ramdisk.module_name(p) for p in order} for r, order in staged.items()}
    assert "virtio_pci" in names[bookworm.release]
    assert "virtio_pci" not in names[sid.release]
    assert "virtio_pci" in ramdisk.read_index(sid.modules_dir).builtin
    for r in names:
        assert {"virtio_blk", "virtio_net"} <= names[r]
    assert "insmod" in ramdisk.init_script(sid.release)
