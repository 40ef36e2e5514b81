"""Real builds of real recipes (mmdebstrap, Debian kernels, mkfs.ext4), checked on the disk."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.builds import build, debugfs, exists, images, interrupt_build

pytestmark = pytest.mark.integration


def recipe_file(tmp: Path, name: str, **changes: object) -> Path:
    """The default recipe with some keys changed, under another name."""
    data = yaml.safe_load((ROOT / "build.yaml").read_text())
    recipe = dict(data["images"][0], name=name)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(recipe.get(k), dict):
            recipe[k] = {**recipe[k], **v}
        else:
            recipe[k] = v
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"images": [recipe]}))
    return path


@pytest.fixture(scope="module")
def default_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("home")
    out = build(ROOT / "build.yaml", home, "--image", "debian-pv")
    return home, out


def test_default_build_registers_ami_aki_ari_that_cross_reference(default_build) -> None:
    home, out = default_build
    machines, kernels, ramdisks = (images(home, t) for t in ("machine", "kernel", "ramdisk"))
    assert (len(machines), len(kernels), len(ramdisks)) == (1, 1, 1)
    ami, aki, ari = machines[0], kernels[0], ramdisks[0]
    assert out["Images"][0]["ImageId"] == ami["ImageId"]
    assert ami["ImageId"].startswith("ami-") and len(ami["ImageId"]) == 21
    assert ami["KernelId"] == aki["ImageId"] and ami["RamdiskId"] == ari["ImageId"]
    assert ami["VirtualizationType"] == "paravirtual"
    assert aki["KernelRelease"] and aki["ImageType"] == "kernel"
    for img in (ami, aki, ari):
        assert Path(img["ImageLocation"]).is_file()
        for key in ("Name", "Architecture", "RootDeviceName", "State", "CreationDate", "Tags"):
            assert key in img


def test_disk_holds_the_akis_modules_and_the_key_agent(default_build) -> None:
    home, _ = default_build
    ami, aki = images(home, "machine")[0], images(home, "kernel")[0]
    disk = ami["ImageLocation"]
    release = aki["KernelRelease"]
    assert exists(disk, f"/lib/modules/{release}/modules.dep")
    assert exists(disk, "/usr/local/sbin/ec2-fetch-ssh-key")
    assert "169.254.169.254" in debugfs(disk, "cat /usr/local/sbin/ec2-fetch-ssh-key")
    assert exists(disk, "/etc/systemd/system/multi-user.target.wants/ec2-fetch-ssh-key.service")
    assert exists(disk, "/usr/sbin/sshd")  # package from an element's package-installs.yaml
    assert exists(disk, "/usr/bin/less")  # package from the recipe
    assert "LABEL=cloudimg-rootfs" in debugfs(disk, "cat /etc/fstab")
    assert not exists(disk, "/tmp/in_target.d")
    label = subprocess.run(
        ["blkid", "-o", "value", "-s", "LABEL", disk], capture_output=True, text=True
    ).stdout.strip()
    assert label == "cloudimg-rootfs"


def test_rebuild_gives_same_aki_ari_and_downloads_nothing(default_build) -> None:
    home, _ = default_build
    before = {i["ImageType"]: i["ImageId"] for i in images(home) if i["ImageType"] != "machine"}
    # any download would go through this dead proxy and fail the build
    dead = "http://127.0.0.1:9"
    env = {"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead}
    start = time.monotonic()
    out = build(ROOT / "build.yaml", home, "--image", "debian-pv", env=env)
    took = time.monotonic() - start
    ami = out["Images"][0]
    assert ami["KernelId"] == before["kernel"]
    assert ami["RamdiskId"] == before["ramdisk"]
    assert took < 60, f"warm rebuild took {took:.1f} s"


def test_modules_omit_leaves_the_tree_out(tmp_path: Path, default_build) -> None:
    _, _ = default_build
    home = tmp_path / "home"
    out = build(recipe_file(tmp_path, "no-modules", modules="omit"), home)
    ami = out["Images"][0]
    release = images(home, "kernel")[0]["KernelRelease"]
    assert not exists(ami["ImageLocation"], f"/lib/modules/{release}")
    assert exists(ami["ImageLocation"], "/usr/sbin/sshd")


@pytest.mark.parametrize("scheme", ["gpt", "mbr"])
def test_partitioned_disk_and_formats(tmp_path: Path, scheme: str, default_build) -> None:
    home = tmp_path / "home"
    recipe = recipe_file(
        tmp_path, f"parts-{scheme}", disk={"partitioning": scheme, "formats": ["raw", "qcow2"]}
    )
    ami = build(recipe, home)["Images"][0]
    raw = ami["Locations"]["raw"]
    table = json.loads(
        subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    assert table["label"] == ("gpt" if scheme == "gpt" else "dos")
    offset = table["partitions"][0]["start"] * 512
    assert exists(raw, "/usr/sbin/sshd", offset)
    assert ami["RootDeviceName"] == "/dev/xvda"
    qcow2 = ami["Locations"]["qcow2"]
    subprocess.run(["qemu-img", "check", qcow2], check=True, capture_output=True)
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, qcow2],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


PHASE_ELEMENT = {
    "root.d": "outside",
    "extra-data.d": "outside",
    "pre-install.d": "inside",
    "install.d": "inside",
    "post-install.d": "inside",
    "finalise.d": "inside",
    "cleanup.d": "outside",
}


def _phase_elements(base: Path) -> None:
    """Two elements with hooks in every phase, each writing where it ran into the image."""
    for element, dep in (("phase-a", "phase-b"), ("phase-b", None)):
        d = base / element
        d.mkdir(parents=True)
        if dep:
            (d / "element-deps").write_text(dep + "\n")
        (d / "environment.d").mkdir()
        (d / "environment.d" / f"10-{element}").write_text(f"export FROM_{element[-1]}=yes\n")
        for phase, where in PHASE_ELEMENT.items():
            (d / phase).mkdir()
            num = "20" if element == "phase-a" else "10"
            target = "$TARGET_ROOT" if where == "outside" else ""
            check = '[ -n "$TARGET_ROOT" ]' if where == "outside" else "[ -d /tmp/in_target.d ]"
            hook = d / phase / f"{num}-{element}"
            line = f"{phase} {num}-{element} {where} $FROM_a$FROM_b"
            hook.write_text(
                f'#!/bin/bash\nset -eu\n{check}\necho "{line}" >> {target}/var/log/phases\n'
            )
            hook.chmod(0o755)
        (d / "install.d" / "README.txt").write_text("not a hook: run-parts skips dotted names\n")
        (d / "install.d" / "30-not-executable").write_text("#!/bin/sh\nexit 1\n")


def test_element_phases_run_in_order_inside_and_outside(tmp_path: Path, default_build) -> None:
    elements = tmp_path / "elements"
    _phase_elements(elements)
    home = tmp_path / "home"
    recipe = recipe_file(tmp_path, "phases", elements=["ec2-base", "phase-a"])
    ami = build(recipe, home, env={"AMILAB_ELEMENTS_PATH": str(elements)})["Images"][0]
    lines = debugfs(ami["ImageLocation"], "cat /var/log/phases").split("\n")
    got = [line for line in lines if line.strip() and not line.startswith("debugfs")]
    want = []
    for phase, where in PHASE_ELEMENT.items():
        want += [f"{phase} 10-phase-b {where} yesyes", f"{phase} 20-phase-a {where} yesyes"]
    assert got == want


def _no_leftovers(home: Path, scratch: Path) -> None:
    mounts = Path("/proc/mounts").read_text()
    assert str(home) not in mounts and str(scratch) not in mounts
    assert not any((home / "work").glob("*")), list((home / "work").glob("*"))
    assert not any(scratch.glob("*")), list(scratch.glob("*"))
    registry = home / "registry.sqlite"
    if registry.exists():
        import sqlite3

        rows = sqlite3.connect(registry).execute("SELECT count(*) FROM images").fetchone()[0]
        assert rows == 0


def _slow_element(base: Path, script: str) -> None:
    d = base / "slow-hook" / "install.d"
    d.mkdir(parents=True)
    hook = d / "50-slow"
    hook.write_text(script)
    hook.chmod(0o755)


SLOW_SLEEP = "sleep 2931"


def test_sigint_during_element_script_leaves_nothing(tmp_path: Path, default_build) -> None:
    elements, scratch, home = tmp_path / "el", tmp_path / "scratch", tmp_path / "home"
    scratch.mkdir()
    # an odd duration, matched exactly below: `pgrep -f "sleep 300"` also found a shell that
    # merely had "sleep 300" in its command line (a false leftover)
    _slow_element(elements, f"#!/bin/sh\ntouch /hook-started\n{SLOW_SLEEP}\n")
    recipe = recipe_file(tmp_path, "interrupted", elements=["ec2-base", "slow-hook"])
    env = {
        "AMILAB_HOME": str(home),
        "AMILAB_ELEMENTS_PATH": str(elements),
        "AMILAB_SCRATCH": str(scratch),
    }

    def proc_mounted() -> None:
        assert "proc" in Path("/proc/mounts").read_text()

    interrupt_build(
        recipe, env, lambda: bool(list(scratch.glob("*/hook-started"))), 300, proc_mounted
    )
    _no_leftovers(home, scratch)
    leftover = subprocess.run(["pgrep", "-x", "-f", SLOW_SLEEP], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_failing_element_names_element_phase_script(tmp_path: Path, default_build) -> None:
    elements, scratch, home = tmp_path / "el", tmp_path / "scratch", tmp_path / "home"
    scratch.mkdir()
    _slow_element(elements, "#!/bin/sh\necho 'about to fail: disk on fire'\nexit 7\n")
    recipe = recipe_file(tmp_path, "failing", elements=["ec2-base", "slow-hook"])
    from tests.conftest import run_amilab

    result = run_amilab(
        "build",
        str(recipe),
        env={
            "AMILAB_HOME": str(home),
            "AMILAB_ELEMENTS_PATH": str(elements),
            "AMILAB_SCRATCH": str(scratch),
        },
    )
    assert result.returncode == 1
    assert "element 'slow-hook', phase install.d, script 50-slow exited with 7" in result.stderr
    assert "about to fail: disk on fire" in result.stderr
    _no_leftovers(home, scratch)
