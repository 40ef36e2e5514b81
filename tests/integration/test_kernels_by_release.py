"""Kernels from other Debian releases (issue 12, items 1-2), for real: bullseye's, bookworm
backports' and sid's cloud kernels are resolved in their suites, downloaded (cached under
XDG_CACHE_HOME for later runs), given a generated ramdisk and registered by a build, and the
default paravirtual image (built with bookworm's kernel) is booted with each through
`smoke --kernel`. The image has no modules for those kernels, so smoke must exit 1 with the
`modules-tree` check naming the booted release, after the guest got far enough for its
console to name that kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builder.build import kernel
from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build, images

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 900
# the three packagings: one .deb with /lib/modules (bullseye), one .deb with .ko.xz
# (bookworm-backports), linux-image + linux-binary + linux-modules + linux-base (sid)
KERNELS = ("debian-cloud-bullseye", "debian-cloud-bookworm-backports", "debian-cloud-sid")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default PV image, and an AKI+ARI per kernel, registered by builds of the same
    recipe with that kernel (its Register step is what registers kernels today)."""
    home = tmp_path_factory.mktemp("home")
    built = build(ROOT / "build.yaml", home, "--image", "debian-pv")["Images"]
    pv = next(i for i in built if i["ImageType"] == "machine")
    base = next(r for r in yaml.safe_load((ROOT / "build.yaml").read_text())["images"]
                if r["name"] == "debian-pv")  # fmt: skip
    recipes = []
    for name in KERNELS:
        recipe = dict(base, name=f"pv-{name}", kernel=name, modules="omit")
        recipe["disk"] = dict(base["disk"], formats=["raw"])
        recipes.append(recipe)
    path = tmp_path_factory.mktemp("recipes") / "kernels.yaml"
    path.write_text(yaml.safe_dump({"images": recipes}))
    out = build(path, home)["Images"]
    kernels = {i["ImageId"]: i for i in images(home, "kernel")}
    akis = {}
    for name in KERNELS:
        ami = next(i for i in out if i["Name"] == f"pv-{name}")
        akis[name] = {"aki": ami["KernelId"], "ari": ami["RamdiskId"],
                      "release": kernels[ami["KernelId"]]["KernelRelease"]}  # fmt: skip
    return {"home": home, "ami": pv["ImageId"], "aki": pv["KernelId"], "kernels": akis}


def test_kernels_listing_names_suites_versions_and_registration(built: dict) -> None:
    result = run_amilab("kernels", "--json", env={"AMILAB_HOME": str(built["home"])})
    assert result.returncode == 0, result.stderr
    rows = {r["Name"]: r for r in json.loads(result.stdout)["Kernels"]}
    for name in KERNELS:
        row, got = rows[name], built["kernels"][name]
        assert row["KernelRelease"] == got["release"]
        assert row["Downloaded"] is True and row["ImageId"] == got["aki"]
        assert row["Suite"] == kernel.definition(name).suite
    assert rows["debian-cloud-sid"]["KernelRelease"].endswith("+deb14-cloud-amd64")
    assert rows["debian-cloud-bullseye"]["KernelRelease"].startswith("5.10.")
    assert rows["debian-cloud"]["ImageId"] == built["aki"]  # the image's own kernel


@pytest.mark.parametrize("name", KERNELS)
def test_other_release_boots_and_modules_tree_fails(built: dict, name: str) -> None:
    k = built["kernels"][name]
    release = k["release"]
    result = run_amilab("smoke", built["ami"], "--kernel", k["aki"], "--json",
                        env={"AMILAB_HOME": str(built["home"])}, timeout=BOOT_TIMEOUT)  # fmt: skip
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report:\n{result.stdout}\n{result.stderr}") from None
    shown = f"{result.stderr[-2000:]}\n{json.dumps(report, indent=1)[-4000:]}"
    assert result.returncode == 1, shown
    assert report["KernelId"] == k["aki"]
    assert report["RamdiskId"] == k["ari"], "the ramdisk generated for that kernel"
    console = Path(report["ConsoleLog"]).read_text(errors="replace")
    assert f"Linux version {release}" in console, shown
    checks = {c["Name"]: c for c in report["Checks"]}
    tree = checks["modules-tree"]
    assert not tree["Passed"], shown
    assert f"booted {release}" in tree["Detail"], tree
    # Logged in (the NIC driver came from the ramdisk): the in-guest checks ran. (Before the
    # TCG layer hid CMPXCHG16B, bookworm-backports' 6.12.95 cloud kernel died here: see
    # harness/launch/layers/accel-tcg.ini.)
    assert checks["kernel-release"]["Actual"] == release, shown
