"""i386 and arm64 images built, booted and checked like x86_64 (architectures.yaml): an i386
paravirtual and an i386 hvm image and an arm64 hvm image on UEFI pass the built-in checks;
kernels of another architecture are booted, not refused, and what happens is classified;
an instance type that cannot run the image's architecture is EC2's error (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.images.registry import Registry
from tests.conftest import ROOT, need, run_amilab
from tests.integration.builds import build, checks, images, smoke

pytestmark = pytest.mark.integration

RECIPES = ROOT / "architectures.yaml"


def i386_env(home: Path) -> dict[str, str]:
    """(This machine's mirror serves a bookworm-security i386 index apt refuses; amilab then
    resolves kernels and makes the base tree without that suite: builder.build.kernel.)"""
    return {"AMILAB_HOME": str(home)}


def register_kernel(env: dict[str, str], name: str) -> str:
    """A catalogue kernel registered as an AKI (with its generated ARI), as the matrix does."""
    code = ("from builder.images.kernel_refs import register_catalogue_kernel as r; "
            f"print(r({name!r})[0].image_id)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def _built(env: dict[str, str], home: Path, name: str) -> dict:
    images = build(RECIPES, home, "--image", name, env=env)["Images"]
    return next(i for i in images if i["Name"] == name)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def i386(home: Path) -> dict:
    """Both i386 images (one base tree, built once) and their records."""
    env = i386_env(home)
    started = time.monotonic()
    pv = _built(env, home, "debian-i386-pv")
    hvm = _built(env, home, "debian-i386-hvm")
    print(f"i386 builds: {time.monotonic() - started:.1f} s")
    return {"env": env, "pv": pv, "hvm": hvm}


@pytest.fixture(scope="module")
def arm64(home: Path) -> dict:
    need("qemu-system-aarch64", "qemu-system-arm")
    need("qemu-aarch64-static", "qemu-user-static")
    started = time.monotonic()
    ami = _built({"AMILAB_HOME": str(home)}, home, "debian-arm64-hvm")
    print(f"arm64 build: {time.monotonic() - started:.1f} s")
    return ami


def test_i386_paravirtual_passes(i386: dict) -> None:
    ami = i386["pv"]
    assert ami["Architecture"] == "i386" and ami["VirtualizationType"] == "paravirtual"
    reg = Registry(Path(i386["env"]["AMILAB_HOME"]))
    aki, ari = reg.get(ami["KernelId"]), reg.get(ami["RamdiskId"])
    assert aki is not None and ari is not None
    assert aki.architecture == ari.architecture == "i386"
    assert aki.kernel_release and aki.kernel_release.endswith("-686-pae")
    result, report = smoke(i386["env"], ami["ImageId"])
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{json.dumps(report, indent=1)}"
    got = checks(report)
    assert got["kernel-release"]["Actual"] == aki.kernel_release
    for name in ("modules-tree", "modprobe-isofs", "metadata-kernel-id", "metadata-ramdisk-id",
                 "userland-i386"):  # fmt: skip
        assert got[name]["Passed"], got[name]
    assert got["metadata-kernel-id"]["Actual"] == ami["KernelId"]
    assert got["metadata-ramdisk-id"]["Actual"] == ami["RamdiskId"]
    assert "qemu-system-x86_64" in report["QemuCommand"][0]


def test_i386_hvm_passes(i386: dict) -> None:
    ami = i386["hvm"]
    assert ami["Architecture"] == "i386" and ami["VirtualizationType"] == "hvm"
    result, report = smoke(i386["env"], ami["ImageId"])
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{json.dumps(report, indent=1)}"
    got = checks(report)
    assert got["kernel-release"]["Actual"].endswith("-686-pae")
    for name in ("modules-tree", "modprobe-isofs", "userland-i386"):
        assert got[name]["Passed"], got[name]


def test_describe_images_shows_the_architectures(i386: dict, arm64: dict, home: Path) -> None:
    by_id = {i["ImageId"]: i for i in images(home)}
    assert by_id[i386["pv"]["ImageId"]]["Architecture"] == "i386"
    assert by_id[i386["pv"]["KernelId"]]["Architecture"] == "i386"
    assert by_id[i386["pv"]["RamdiskId"]]["Architecture"] == "i386"
    assert by_id[arm64["ImageId"]]["Architecture"] == "arm64"


def test_i386_tree_with_the_x86_64_kernel(i386: dict) -> None:
    """bookworm's x86_64 cloud kernel runs the i386 userland (a 64-bit kernel runs 32-bit
    programs); the image has only the 686-pae modules, which the report names."""
    env = i386["env"]
    aki = register_kernel(env, "debian-cloud-bookworm")
    result, report = smoke(env, i386["pv"]["ImageId"], "--kernel", aki)
    got = checks(report)
    assert got["kernel-release"]["Passed"], got["kernel-release"]
    assert got["kernel-release"]["Actual"].endswith("-cloud-amd64")
    assert got["userland-i386"]["Passed"], got["userland-i386"]
    assert not got["modules-tree"]["Passed"]
    assert "-686-pae" in got["modules-tree"]["Detail"], got["modules-tree"]
    assert result.returncode == 1


def test_x86_64_image_with_the_i386_kernel_fails_within_60_s(i386: dict, home: Path) -> None:
    """The i386 kernel cannot execute x86_64's init: a FAIL whose class says so."""
    x86 = build(ROOT / "build.yaml", home, "--image", "debian-pv")["Images"]
    ami = next(i for i in x86 if i["VirtualizationType"] == "paravirtual")
    assert ami["Architecture"] == "x86_64"
    aki = register_kernel(i386["env"], "debian-686-pae-bookworm")
    started = time.monotonic()
    result, report = smoke(i386["env"], ami["ImageId"], "--kernel", aki)
    seconds = time.monotonic() - started
    assert result.returncode == 1 and report["Passed"] is False
    assert report["Failure"].startswith("init exec format error"), report["Failure"]
    assert "Exec format error" in report["Failure"] or "error -8" in report["Failure"]
    assert seconds < 60, seconds
    print(f"x86_64 image with the i386 kernel: failed in {seconds:.1f} s")


def test_arm64_hvm_on_uefi_passes(arm64: dict, home: Path) -> None:
    assert arm64["Architecture"] == "arm64" and arm64["VirtualizationType"] == "hvm"
    result, report = smoke({"AMILAB_HOME": str(home)}, arm64["ImageId"])
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{json.dumps(report, indent=1)}"
    got = checks(report)
    assert got["kernel-release"]["Actual"].endswith("-cloud-arm64")
    for name in ("modules-tree", "modprobe-isofs", "userland-arm64"):
        assert got[name]["Passed"], got[name]
    assert "qemu-system-aarch64" in report["QemuCommand"][0]
    assert "QEMU_EFI.fd" in " ".join(report["QemuCommand"])


@pytest.mark.parametrize("command", ["smoke", "run-instances"])
def test_arm64_image_on_an_x86_only_type_is_refused(arm64: dict, home: Path,
                                                    command: str) -> None:  # fmt: skip
    env = {**os.environ, "AMILAB_HOME": str(home)}
    def instances() -> set[str]:
        return {p.name for p in (home / "instances").glob("i-*")}

    before = instances()
    result = run_amilab(command, arm64["ImageId"], "--instance-type", "t3.micro", env=env,
                        timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()  # smoke says its accelerator first
    assert "Traceback" not in result.stderr, result.stderr
    assert "InvalidParameterValue: The architecture 'x86_64' of the specified instance type " \
        "does not match the architecture 'arm64' of the specified AMI" in lines[-1]
    assert instances() == before  # refused before any instance was made
