"""Bring your own kernel (issue 12, items 3-4), for real: bullseye's cloud kernel package,
unpacked as a build tree would be (bzImage, X/lib/modules/<release>, config), registered with
`register-kernel --vmlinuz --modules --config`, and the same package with `--deb`, give one
AKI (the same vmlinuz bytes) with the same release. The default paravirtual image (generated
ramdisk, bookworm's kernel) booted with it through `smoke --kernel` gets a ramdisk generated
for that kernel, registered as its ARI, and its console names the release; smoke exits 1 on
`modules-tree` (the image has no modules for that kernel: add-modules' business)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.build import kernel
from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build, images

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 900
KERNEL = "debian-cloud-bullseye"  # one .deb, uncompressed modules; boots under TCG


def _register(home: Path, *args: str) -> dict:
    res = run_amilab("register-kernel", *args, "--json", env={"AMILAB_HOME": str(home)},
                     timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (image,) = json.loads(res.stdout)["Images"]
    return image


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    k = kernel.resolve_kernel(kernel.definition(KERNEL))
    assert k.deb is not None
    tree = tmp_path_factory.mktemp("buildtree")
    subprocess.run(["dpkg-deb", "-x", str(k.deb), str(tree)], check=True)
    home = tmp_path_factory.mktemp("home")
    files = _register(home, "--vmlinuz", str(tree / f"boot/vmlinuz-{k.release}"),
                      "--modules", str(tree), "--config", str(tree / f"boot/config-{k.release}"),
                      "--name", "my-kernel")  # fmt: skip
    other = tmp_path_factory.mktemp("home-deb")
    from_deb = _register(other, "--deb", str(k.deb))
    built = build(ROOT / "build.yaml", home, "--image", "debian-pv")["Images"]
    ami = next(i for i in built if i["ImageType"] == "machine")
    return {"home": home, "kernel": k, "files": files, "deb": from_deb, "ami": ami}


def test_files_and_deb_give_the_same_aki(registered: dict) -> None:
    k, files, deb = registered["kernel"], registered["files"], registered["deb"]
    assert files["KernelRelease"] == deb["KernelRelease"] == k.release
    assert files["ImageId"] == deb["ImageId"] == k.aki_id  # the same vmlinuz bytes
    assert files["Name"] == "my-kernel"


def test_pv_image_boots_it_with_a_ramdisk_generated_for_it(registered: dict) -> None:
    home, k, aki = registered["home"], registered["kernel"], registered["files"]["ImageId"]
    result = run_amilab("smoke", registered["ami"]["ImageId"], "--kernel", aki, "--json",
                        env={"AMILAB_HOME": str(home)}, timeout=BOOT_TIMEOUT)  # fmt: skip
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report:\n{result.stdout}\n{result.stderr}") from None
    shown = f"{result.stderr[-2000:]}\n{json.dumps(report, indent=1)[-4000:]}"
    assert report["KernelId"] == aki
    console = Path(report["ConsoleLog"]).read_text(errors="replace")
    assert f"Linux version {k.release}" in console, shown
    ramdisks = {r["ImageId"]: r for r in images(home, "ramdisk")}
    assert report["RamdiskId"] in ramdisks and report["RamdiskId"] != \
        registered["ami"]["RamdiskId"], shown  # fmt: skip
    assert ramdisks[report["RamdiskId"]]["Name"] == f"initrd-{k.release}-generated"
    checks = {c["Name"]: c for c in report["Checks"]}
    assert result.returncode == 1, shown
    assert not checks["modules-tree"]["Passed"] and f"booted {k.release}" in \
        checks["modules-tree"]["Detail"], shown  # fmt: skip


def test_after_add_modules_the_image_passes_with_it(registered: dict) -> None:
    """The issue's last step for an own kernel: its modules go into a new AMI (add-modules),
    which then passes smoke with that kernel as its default, modprobe checks included."""
    home, k, aki = registered["home"], registered["kernel"], registered["files"]["ImageId"]
    env = {"AMILAB_HOME": str(home)}
    added = run_amilab("add-modules", registered["ami"]["ImageId"], "--kernel", aki,
                       "--default-kernel", "--name", "debian-pv-own-kernel", "--json",
                       env=env, timeout=BOOT_TIMEOUT)  # fmt: skip
    assert added.returncode == 0, added.stderr
    (new,) = json.loads(added.stdout)["Images"]
    assert new["KernelId"] == aki and new["ImageId"] != registered["ami"]["ImageId"]
    result = run_amilab("smoke", new["ImageId"], "--json", env=env, timeout=BOOT_TIMEOUT)
    report = json.loads(result.stdout)
    shown = f"{result.stderr[-2000:]}\n{json.dumps(report, indent=1)[-4000:]}"
    assert result.returncode == 0 and report["Passed"], shown
    checks = {c["Name"]: c for c in report["Checks"]}
    assert checks["kernel-release"]["Actual"] == k.release, shown
    assert any(n.startswith("modprobe") and c["Passed"] for n, c in checks.items()), shown
