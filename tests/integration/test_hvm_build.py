"""HVM disks: partition layout, GRUB for BIOS and UEFI written without mounts, formats."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build, debugfs, exists, images
from tests.integration.test_build import _no_leftovers, recipe_file

pytestmark = pytest.mark.integration

FORMATS = ["raw", "qcow2", "vmdk", "vmdk-stream"]


def _table(raw: str) -> dict:
    out = subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["partitiontable"]


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The HVM recipe shipped in build.yaml, built as the user would build it."""
    home = tmp_path_factory.mktemp("hvm") / "home"
    return home, build(ROOT / "build.yaml", home, "--image", "debian-hvm")["Images"][0]


def test_hybrid_gpt_layout_and_grub(hybrid) -> None:
    home, ami = hybrid
    assert ami["VirtualizationType"] == "hvm"
    assert ami["KernelId"] is None and ami["RamdiskId"] is None
    raw = ami["Locations"]["raw"]
    table = _table(raw)
    assert table["label"] == "gpt"
    names = [p.get("name") for p in table["partitions"]]
    assert names == ["bios", "esp", "root"]
    with open(raw, "rb") as f:
        mbr = f.read(512)
        f.seek(table["partitions"][0]["start"] * 512)
        core = f.read(512)
    assert b"GRUB" in mbr and mbr[510:] == b"\x55\xaa"
    assert core != bytes(512)
    esp = table["partitions"][1]["start"] * 512
    listing = subprocess.run(
        ["mdir", "-i", f"{raw}@@{esp}", "::/EFI/BOOT"], capture_output=True, text=True
    )
    assert "BOOTX64" in listing.stdout, listing.stderr
    root = table["partitions"][2]["start"] * 512
    release = images(home, "kernel")[0]["KernelRelease"]
    assert exists(raw, f"/boot/vmlinuz-{release}", root)
    assert exists(raw, f"/boot/initrd.img-{release}", root)
    assert exists(raw, f"/lib/modules/{release}/modules.dep", root)
    cfg = debugfs(raw, "cat /boot/grub/grub.cfg", root)
    uuid = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "UUID", "-O", str(root), raw],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert f"root=UUID={uuid}" in cfg and "console=ttyS0" in cfg
    assert f"kernel /boot/vmlinuz-{release}" in debugfs(raw, "cat /boot/grub/menu.lst", root)


def test_every_format_checks_clean_and_equals_raw(hybrid) -> None:
    _, ami = hybrid
    locations = ami["Locations"]
    assert sorted(locations) == sorted(FORMATS)
    raw = locations["raw"]
    for fmt in ("qcow2", "vmdk", "vmdk-stream"):
        path = locations[fmt]
        qfmt = "qcow2" if fmt == "qcow2" else "vmdk"
        check = subprocess.run(
            ["qemu-img", "check", "-f", qfmt, path], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        cmp = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", qfmt, raw, path],
            capture_output=True,
            text=True,
        )
        assert cmp.returncode == 0, f"{fmt}: {cmp.stdout}{cmp.stderr}"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", locations["vmdk-stream"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"


def test_mbr_bios_layout(tmp_path: Path) -> None:
    home = tmp_path / "home"
    recipe = recipe_file(
        tmp_path, "hvm-mbr", virtualization="hvm", boot="bios", disk={"partitioning": "mbr"}
    )
    ami = build(recipe, home)["Images"][0]
    raw = ami["ImageLocation"]
    table = _table(raw)
    assert table["label"] == "dos" and len(table["partitions"]) == 1
    with open(raw, "rb") as f:
        head = f.read(2048 * 512)
    assert b"GRUB" in head[:512]
    assert head[512:1024] != bytes(512)  # core.img in the gap after the MBR


def _loops(under: Path) -> list[str]:
    """Loop devices backed by a file under `under`: other test workers run beside this one,
    so the host's whole list is not this build's to judge."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(under) in line]


def _mounts(under: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if str(under) in line]


def test_failed_bootloader_step_leaves_nothing(tmp_path: Path) -> None:
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    scratch.mkdir()
    loops_before, mounts_before = _loops(tmp_path), _mounts(tmp_path)
    recipe = recipe_file(tmp_path, "hvm-broken", virtualization="hvm", disk={"partitioning": "gpt"})
    result = run_amilab(
        "build",
        str(recipe),
        env={
            "AMILAB_HOME": str(home),
            "AMILAB_SCRATCH": str(scratch),
            "AMILAB_GRUB_DIR": str(tmp_path / "no-grub-here"),
        },
    )
    assert result.returncode == 1, result.stderr
    assert "bootloader: grub-mkimage for i386-pc failed" in result.stderr
    assert _loops(tmp_path) == loops_before
    assert _mounts(tmp_path) == mounts_before
    _no_leftovers(home, scratch)


def _smoke(home: Path, ami: str, *args: str) -> dict:
    result = run_amilab("smoke", ami, "--json", *args, env={"AMILAB_HOME": str(home)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.parametrize(
    "firmware,fmt", [("bios", "qcow2"), ("uefi", "vmdk-stream"), ("uefi", "raw")]
)
def test_hvm_smoke_boots_its_own_grub(hybrid, firmware: str, fmt: str) -> None:
    home, ami = hybrid
    report = _smoke(home, ami["ImageId"], "--firmware", firmware, "--format", fmt)
    assert report["Passed"] and report["VirtualizationType"] == "hvm"
    assert "-kernel" not in report["QemuCommand"]
    firmware_args = " ".join(report["QemuCommand"])
    assert ("OVMF" in firmware_args) == (firmware == "uefi")
    release = images(home, "kernel")[0]["KernelRelease"]
    checks = {c["Name"]: c for c in report["Checks"]}
    assert checks["kernel-release"]["Actual"] == release
    assert checks["metadata-kernel-id"]["Actual"] == "404"


def test_pv_grub_boots_the_kernel_its_menu_names(hybrid) -> None:
    home, ami = hybrid
    report = _smoke(home, ami["ImageId"], "--kernel", "pv-grub")
    assert report["Passed"]
    aki = report["KernelId"]
    assert aki.startswith("aki-") and report["RamdiskId"] is None
    pv_grub = [i for i in images(home, "kernel") if i["Name"] == "pv-grub-hd0"]
    assert [i["ImageId"] for i in pv_grub] == [aki]
    checks = {c["Name"]: c for c in report["Checks"]}
    assert checks["metadata-kernel-id"]["Actual"] == aki
    release = [i for i in images(home, "kernel") if i["Name"] != "pv-grub-hd0"][0]
    assert checks["kernel-release"]["Actual"] == release["KernelRelease"]
    assert "-kernel" in report["QemuCommand"]


def test_pv_grub_without_a_menu_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ami = build(recipe_file(tmp_path, "pv-no-menu"), home)["Images"][0]
    result = run_amilab(
        "smoke", ami["ImageId"], "--kernel", "pv-grub", env={"AMILAB_HOME": str(home)}
    )
    assert result.returncode == 2
    assert "PV-GRUB found no usable menu" in result.stderr
    assert "Traceback" not in result.stderr
