"""The diskimage-builder engine through the real CLI: `engine: diskimage-builder` recipes built
by disk-image-create, checked on the disk with debugfs (never mounted)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_amilab
from tests.integration.builds import build, debugfs, exists, images, interrupt_build

pytestmark = pytest.mark.integration


def dib_recipe(tmp: Path, name: str, **changes: object) -> Path:
    """The default recipe built by diskimage-builder, with some keys changed."""
    data = yaml.safe_load((ROOT / "build.yaml").read_text())
    recipe = {**data["images"][0], "name": name, "engine": "diskimage-builder", **changes}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"images": [recipe]}))
    return path


def hook_element(base: Path, name: str, phase: str, script: str) -> None:
    hook = base / name / phase / f"01-{name}"
    hook.parent.mkdir(parents=True)
    hook.write_text(script)
    hook.chmod(0o755)


def loops_under(path: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [line for line in out.splitlines() if str(path) in line]


def assert_nothing_left(home: Path, registered: bool = False) -> None:
    assert str(home) not in Path("/proc/mounts").read_text()
    assert loops_under(home) == []
    assert not any((home / "work").glob("*")), list((home / "work").glob("*"))
    registry = home / "registry.sqlite"
    if registry.exists() and not registered:
        assert sqlite3.connect(registry).execute("SELECT count(*) FROM images").fetchone()[0] == 0


@pytest.fixture(scope="module")
def dib_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("dib")
    home = tmp / "home"
    return home, build(dib_recipe(tmp, "dib-pv"), home)


def test_dib_disk_has_the_recipes_packages_and_element_files(dib_build) -> None:
    home, out = dib_build
    ami = out["Images"][0]
    disk = ami["ImageLocation"]
    release = images(home, "kernel")[0]["KernelRelease"]
    assert exists(disk, "/usr/sbin/sshd")  # from an element's package-installs.yaml
    assert exists(disk, "/usr/bin/less")  # from the recipe's packages (-p)
    assert exists(disk, "/usr/bin/kmod")  # every image's base packages, as with native
    assert exists(disk, "/usr/local/sbin/ec2-fetch-ssh-key")  # files elements install
    assert exists(disk, "/usr/local/sbin/first-nic-network")
    assert exists(disk, "/etc/systemd/system/multi-user.target.wants/ec2-fetch-ssh-key.service")
    assert exists(disk, f"/lib/modules/{release}/modules.dep")  # the AKI's, put in by amilab
    assert debugfs(disk, "cat /etc/hostname").splitlines()[0] == "dib-pv"  # IMAGE_NAME
    assert "LABEL=cloudimg-rootfs" in debugfs(disk, "cat /etc/fstab")
    assert exists(disk, "/etc/dib-manifests")  # diskimage-builder really built it


def test_dib_tree_has_no_kernel_no_host_devices_no_build_leftovers(dib_build) -> None:
    home, out = dib_build
    disk = out["Images"][0]["ImageLocation"]
    status = debugfs(disk, "cat /var/lib/dpkg/status")
    assert "Package: openssh-server" in status
    assert "Package: linux-image-" not in status  # the kernel is the AKI, outside the image
    assert "Package: initramfs-tools" not in status
    assert not exists(disk, "/vmlinuz")
    assert exists(disk, "/dev/null")
    assert not exists(disk, "/dev/loop0")  # the build's bind mount of the host's /dev
    assert not exists(disk, "/tmp/in_target.d")
    assert not exists(disk, "/etc/network/interfaces.d/eth0")  # networking is the elements'
    assert exists(disk, "/proc") and exists(disk, "/sys")
    assert_nothing_left(home, registered=True)


def test_dib_failing_element_names_element_phase_script(tmp_path: Path) -> None:
    elements, home = tmp_path / "el", tmp_path / "home"
    script = "#!/bin/sh\necho 'dib hook: disk on fire'\nexit 7\n"
    hook_element(elements, "dib-fail", "root.d", script)
    recipe = dib_recipe(tmp_path, "dib-failing", elements=["ec2-base", "dib-fail"])
    result = run_amilab(
        "build",
        str(recipe),
        env={"AMILAB_HOME": str(home), "AMILAB_ELEMENTS_PATH": str(elements)},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "element 'dib-fail', phase root.d, script 01-dib-fail failed" in result.stderr
    assert "dib hook: disk on fire" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_left(home)


def test_dib_sigint_during_element_script_leaves_nothing(tmp_path: Path) -> None:
    elements, home, flags = tmp_path / "el", tmp_path / "home", tmp_path / "flags"
    flags.mkdir()
    # like DIB itself, the hook mounts things into the tree, then hangs
    hook_element(
        elements,
        "dib-hang",
        "root.d",
        '#!/bin/sh\nset -e\nmkdir -p "$TARGET_ROOT/hang"\n'
        'mount -t tmpfs amilab-dib-hang "$TARGET_ROOT/hang"\n'
        'touch "$HANG_FLAG"\nexec sleep 313\n',
    )
    recipe = dib_recipe(
        tmp_path,
        "dib-interrupted",
        elements=["ec2-base", "dib-hang"],
        environment={"HANG_FLAG": str(flags / "started")},  # the recipe's env reaches DIB
    )
    env = {"AMILAB_HOME": str(home), "AMILAB_ELEMENTS_PATH": str(elements)}
    interrupt_build(recipe, env, (flags / "started").exists, 600)
    assert_nothing_left(home)
    assert "amilab-dib-hang" not in Path("/proc/mounts").read_text()
    for pattern in ("sleep 313", "dib-hang"):
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"{pattern} still running"
