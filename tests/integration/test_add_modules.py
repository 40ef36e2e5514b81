"""add-modules for real (issue 12, item 5), on both kinds of disk amilab builds:

- the default paravirtual image (unpartitioned, built with bookworm's cloud kernel) gets the
  modules of bullseye's, bookworm-backports' and sid's cloud kernels; each new AMI, with
  `--default-kernel` (that AKI and a ramdisk generated for it), passes `smoke`, including the
  recipe's `modprobe` checks;
- the HVM image (GPT: BIOS boot, ESP, root) gets bookworm-backports' kernel with
  `--default-kernel`: kernel, initrd and a first GRUB entry go into its /boot, and the new
  AMI's own GRUB boots that kernel (`smoke` checks `uname -r`, the tree and modprobe).

Both disks' roots are ext4, so e2fsprogs writes them (no libguestfs appliance); the original
AMIs' disk digests stay what they were. That the old image fails `smoke --kernel` for these
kernels (modules-tree) is test_kernels_by_release.py's.

The AKIs and ARIs come from `register_catalogue_kernel` (what a build's Register step makes):
the kernels are cached, so this takes about a second each. The HVM recipe is build.yaml's
with only the raw format, so neither build nor add-modules converts disks the test never boots.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from builder.ids import sparse_sha256
from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build, smoke

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 900
KERNELS = ("debian-cloud-bullseye", "debian-cloud-bookworm-backports", "debian-cloud-sid")
HVM_KERNEL = "debian-cloud-bookworm-backports"


def _smoke(home: Path, *args: str) -> tuple[int, dict, str]:
    result, report = smoke({"AMILAB_HOME": str(home)}, *args)
    shown = f"{result.stderr[-2000:]}\n{json.dumps(report, indent=1)[-4000:]}"
    return result.returncode, report, shown


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    recipes = {r["name"]: r for r in yaml.safe_load((ROOT / "build.yaml").read_text())["images"]}
    hvm = dict(recipes["debian-hvm"], disk=dict(recipes["debian-hvm"]["disk"], formats=["raw"]))
    path = tmp_path_factory.mktemp("recipes") / "images.yaml"
    path.write_text(yaml.safe_dump({"images": [recipes["debian-pv"], hvm]}))
    built = {i["Name"]: i for i in build(path, home)["Images"] if i["ImageType"] == "machine"}
    old = os.environ.get("AMILAB_HOME")
    os.environ["AMILAB_HOME"] = str(home)
    try:
        from builder.images.kernel_refs import register_catalogue_kernel

        kernels = {n: register_catalogue_kernel(n) for n in KERNELS}
    finally:
        if old is None:
            os.environ.pop("AMILAB_HOME")
        else:
            os.environ["AMILAB_HOME"] = old
    sources = {
        kind: {"ami": built[name]["ImageId"], "raw": Path(built[name]["Locations"]["raw"])}
        for kind, name in (("pv", "debian-pv"), ("hvm", "debian-hvm"))
    }
    for src in sources.values():
        src["digest"] = sparse_sha256(src["raw"])
    return {"home": home, "sources": sources, "kernels": kernels}


def _add(home: Path, ami: str, aki: str) -> dict:
    result = run_amilab("add-modules", ami, "--kernel", aki, "--default-kernel", "--json",
                        env={"AMILAB_HOME": str(home)}, timeout=BOOT_TIMEOUT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)["Images"][0]


def _passes_with(home: Path, new: dict, release: str) -> None:
    status, report, shown = _smoke(home, new["ImageId"])
    assert status == 0, shown
    checks = {c["Name"]: c for c in report["Checks"]}
    assert checks["kernel-release"]["Actual"] == release, shown
    assert checks["modules-tree"]["Passed"], shown
    for module in ("isofs", "vfat"):  # build.yaml's checks for both images
        assert checks[f"modprobe-{module}"]["Passed"], shown


def test_add_modules_per_kernel(world: dict) -> None:
    home, pv = world["home"], world["sources"]["pv"]
    with ThreadPoolExecutor(max_workers=1) as pool:  # the next add-modules while one boots
        added: dict[str, Future[dict]] = {
            n: pool.submit(_add, home, pv["ami"], world["kernels"][n][0].image_id)
            for n in KERNELS
        }
        for name in KERNELS:
            aki, ari = world["kernels"][name]
            new = added[name].result()
            assert new["ImageId"] != pv["ami"]
            assert new["Name"] == f"debian-pv-{aki.kernel_release}"
            assert (new["KernelId"], new["RamdiskId"]) == (aki.image_id, ari.image_id)
            _passes_with(home, new, aki.kernel_release)
    # the original image: its disk was only read
    assert sparse_sha256(pv["raw"]) == pv["digest"]
    images = run_amilab("images", "--json", "--image-id", pv["ami"],
                        env={"AMILAB_HOME": str(home)}, check=True)  # fmt: skip
    assert json.loads(images.stdout)["Images"][0]["Locations"]["raw"] == str(pv["raw"])
    again = run_amilab("add-modules", pv["ami"], "--kernel",
                       world["kernels"][KERNELS[0]][0].image_id,
                       env={"AMILAB_HOME": str(home)})  # fmt: skip
    assert again.returncode == 2 and "already in use" in again.stderr  # the default name
    assert not list((home / "work").glob("add-modules-*"))


def test_hvm_image_boots_the_added_kernel_from_its_own_grub(world: dict) -> None:
    home, hvm = world["home"], world["sources"]["hvm"]
    aki, _ = world["kernels"][HVM_KERNEL]
    new = _add(home, hvm["ami"], aki.image_id)
    assert new["VirtualizationType"] == "hvm" and new["KernelId"] is None
    _passes_with(home, new, aki.kernel_release)
    assert sparse_sha256(hvm["raw"]) == hvm["digest"]

