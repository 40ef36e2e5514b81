"""add-modules for real (issue 12, item 5): the default paravirtual image (built with
bookworm's cloud kernel) gets the modules of bullseye's, bookworm-backports' and sid's cloud
kernels.
For each: `smoke --kernel AKI` of the image exits 1 (modules-tree), `add-modules
--default-kernel` registers a new AMI that passes `smoke` with that kernel, including the
recipe's `modprobe` checks, and the original AMI's disk digest stays what it was.

The AKIs and ARIs come from `register_catalogue_kernel` (what a build's Register step makes),
not from builds of derived recipes: the kernels are cached, so this takes about a second each.
While one smoke boots, the next kernel's add-modules runs (two cores: one QEMU, one
libguestfs appliance) to keep the warm run near six minutes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.ids import sparse_sha256
from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 900
KERNELS = ("debian-cloud-bullseye", "debian-cloud-bookworm-backports", "debian-cloud-sid")


def _smoke(home: Path, *args: str) -> tuple[int, dict, str]:
    result = run_amilab("smoke", *args, "--json", env={"AMILAB_HOME": str(home)},
                        timeout=BOOT_TIMEOUT)  # fmt: skip
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report:\n{result.stdout}\n{result.stderr}") from None
    shown = f"{result.stderr[-2000:]}\n{json.dumps(report, indent=1)[-4000:]}"
    return result.returncode, report, shown


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    pv = next(i for i in build(ROOT / "build.yaml", home, "--image", "debian-pv")["Images"]
              if i["ImageType"] == "machine")  # fmt: skip
    old = os.environ.get("AMILAB_HOME")
    os.environ["AMILAB_HOME"] = str(home)
    try:
        from builder.images.modules import register_catalogue_kernel

        kernels = {n: register_catalogue_kernel(n) for n in KERNELS}
    finally:
        if old is None:
            os.environ.pop("AMILAB_HOME")
        else:
            os.environ["AMILAB_HOME"] = old
    raw = Path(pv["Locations"]["raw"])
    return {"home": home, "ami": pv["ImageId"], "raw": raw, "digest": sparse_sha256(raw),
            "kernels": kernels}  # fmt: skip


def test_add_modules_per_kernel(world: dict) -> None:
    home = world["home"]

    def add(name: str) -> dict:
        aki = world["kernels"][name][0]
        result = run_amilab("add-modules", world["ami"], "--kernel", aki.image_id,
                            "--default-kernel", "--json", env={"AMILAB_HOME": str(home)},
                            timeout=BOOT_TIMEOUT)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)["Images"][0]

    with ThreadPoolExecutor(max_workers=1) as pool:
        added: dict[str, Future[dict]] = {n: pool.submit(add, n) for n in KERNELS}
        for name in KERNELS:
            aki, ari = world["kernels"][name]
            status, report, shown = _smoke(home, world["ami"], "--kernel", aki.image_id)
            assert status == 1, shown
            tree = {c["Name"]: c for c in report["Checks"]}["modules-tree"]
            assert not tree["Passed"] and f"booted {aki.kernel_release}" in tree["Detail"], shown
        for name in KERNELS:
            aki, ari = world["kernels"][name]
            new = added[name].result()
            assert new["ImageId"] != world["ami"]
            assert new["Name"] == f"debian-pv-{aki.kernel_release}"
            assert (new["KernelId"], new["RamdiskId"]) == (aki.image_id, ari.image_id)
            status, report, shown = _smoke(home, new["ImageId"])
            assert status == 0, shown
            checks = {c["Name"]: c for c in report["Checks"]}
            assert checks["kernel-release"]["Actual"] == aki.kernel_release, shown
            assert checks["modules-tree"]["Passed"], shown
            for module in ("isofs", "vfat"):  # build.yaml's checks for debian-pv
                assert checks[f"modprobe-{module}"]["Passed"], shown
    # the original image: its disk was only read
    assert sparse_sha256(world["raw"]) == world["digest"]
    images = run_amilab("images", "--json", "--image-id", world["ami"],
                        env={"AMILAB_HOME": str(home)}, check=True)  # fmt: skip
    assert json.loads(images.stdout)["Images"][0]["Locations"]["raw"] == str(world["raw"])
    again = run_amilab("add-modules", world["ami"], "--kernel",
                       world["kernels"][KERNELS[0]][0].image_id,
                       env={"AMILAB_HOME": str(home)})  # fmt: skip
    assert again.returncode == 2 and "already in use" in again.stderr  # the default name
    assert not list((home / "work").glob("add-modules-*"))
