"""Out-of-tree modules end to end (issue #27): a recipe with Debian's v4l2loopback-dkms and a
Kbuild source tree builds; `modules check` classifies them without booting (the image's own
kernel: loads; another catalogue kernel: needs-rebuild); one boot's smoke finds v4l2loopback
loaded from updates/dkms with /dev/video0 present. A DKMS package the suite lacks is exit 2.

The cloud kernel has no V4L2 (CONFIG_MEDIA_SUPPORT is off), so the image boots Debian's
generic kernel, which v4l2loopback's dependency videodev is part of."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from builder.ids import sparse_sha256
from tests.conftest import run_amilab
from tests.integration.builds import SMOKE_TIMEOUT, build, debugfs, images
from tests.unit.builder.modules.test_verdict import DATA, _patched_crc

pytestmark = pytest.mark.integration

RECIPE = """\
images:
  - name: v4l2-dkms
    elements: [ec2-base]
    kernel: debian-generic
    dkms: [{dkms}]
    extra-modules: [hello, {crc}.ko]
    disk: {{size: 2G, formats: [raw]}}
    checks:
      metadata: false
      probes: {{v4l2loopback: test -c /dev/video0, hello: grep -q '^hello ' /proc/modules}}
"""
# The CRC fixture, booted: Debian's v4l2loopback.ko for this kernel (tests/data/modules) with
# one CRC in its __versions changed (video_ioctl2) and renamed (.modinfo and this_module),
# so it sits beside the DKMS copy as a prebuilt extra module.
CRC = "v4l2crcpatch"  # as long as "v4l2loopback": the names are patched in place
CRC_SYMBOL = "video_ioctl2"
HELLO = """\
#include <linux/module.h>
#include <linux/init.h>
static int __init hello_init(void) { return 0; }
static void __exit hello_exit(void) { }
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
"""


def _recipe(tmp: Path, dkms: str) -> Path:
    (tmp / "hello").mkdir(exist_ok=True)
    (tmp / "hello" / "hello.c").write_text(HELLO)
    (tmp / "hello" / "Kbuild").write_text("obj-m := hello.o\n")
    data = _patched_crc((DATA / "v4l2loopback.ko").read_bytes(), CRC_SYMBOL)
    (tmp / f"{CRC}.ko").write_bytes(data.replace(b"v4l2loopback\0", CRC.encode() + b"\0"))
    path = tmp / f"{dkms}.yaml"
    path.write_text(RECIPE.format(dkms=dkms, crc=CRC))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    tmp = tmp_path_factory.mktemp("modules")
    home = tmp / "home"
    t0 = time.monotonic()
    out = build(_recipe(tmp, "v4l2loopback-dkms"), home)
    return home, out["Images"][0], time.monotonic() - t0


def test_a_dkms_package_the_suite_lacks_is_bad_input(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_amilab("build", str(_recipe(tmp_path, "no-such-module-dkms")),
                        env={"AMILAB_HOME": str(home)}, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "dkms[0]: no-such-module-dkms is not in the bookworm archive" in (lines[0])
    ), result.stderr
    assert not (home / "artifacts").exists()


def test_describe_images_lists_the_modules(built) -> None:
    home, ami, seconds = built
    [listed] = [i for i in images(home, "machine") if i["ImageId"] == ami["ImageId"]]
    [aki] = [i for i in images(home, "kernel") if i["ImageId"] == ami["KernelId"]]
    mods = {m["Name"]: m for m in listed["amilab:OutOfTreeModules"]}
    release = aki["KernelRelease"]
    v4l2 = mods["v4l2loopback"]
    assert (v4l2["Source"], v4l2["KernelRelease"]) == ("dkms", release)
    assert v4l2["Origin"].startswith("v4l2loopback-dkms=") and v4l2["Version"]
    assert v4l2["Path"] == f"/lib/modules/{release}/updates/dkms/v4l2loopback.ko"
    assert (mods["hello"]["Source"], mods["hello"]["Version"]) == ("source", "1.0")
    assert mods["hello"]["Path"] == f"/lib/modules/{release}/extra/hello.ko"
    # the headers were there for the build only
    assert "linux-headers" not in debugfs(listed["ImageLocation"], "ls /usr/src")
    print(f"build with dkms and extra-modules: {seconds:.1f} s")


def test_static_check_own_kernel_loads_another_needs_rebuild(built) -> None:
    home, ami, _ = built
    args = ("modules", "check", ami["ImageId"], "--kernel", ami["KernelId"],
            "--kernel", "debian-cloud-trixie", "--json")  # fmt: skip
    result = run_amilab(*args, env={"AMILAB_HOME": str(home)}, timeout=600)
    assert result.returncode == 1, result.stderr  # trixie's cells do not load
    cells = json.loads(result.stdout)["Cells"]
    own = [c for c in cells if c["KernelId"] == ami["KernelId"]]
    other = [c for c in cells if c["KernelId"] != ami["KernelId"]]
    assert {c["Module"] for c in own} == {"v4l2loopback", "hello", CRC}
    assert all(c["Class"] == "loads" for c in own if c["Module"] != CRC), own
    [crc] = [c for c in own if c["Module"] == CRC]
    assert crc["Class"] == f"refused: symbol {CRC_SYMBOL} disagrees", crc
    assert f"disagrees about version of symbol {CRC_SYMBOL}" in crc["Evidence"][0]
    assert all(c["Class"] == "needs-rebuild" for c in other), other
    assert all(c["KernelRelease"] in c["Evidence"][0] for c in other)
    # warm: the kernels' indexes are cached, a cell takes milliseconds
    t0 = time.monotonic()
    again = run_amilab(*args, env={"AMILAB_HOME": str(home)}, timeout=120)
    warm = json.loads(again.stdout)["Cells"]
    print(f"modules check warm: {time.monotonic() - t0:.2f} s for {len(warm)} cells (CLI), "
          f"per cell {max(c['Milliseconds'] for c in warm):.2f} ms at most")  # fmt: skip
    # the same verdicts warm (speed is the bench's to measure, not a test's to assert)
    assert [(c["Module"], c["KernelId"], c["Class"]) for c in warm] == [
        (c["Module"], c["KernelId"], c["Class"]) for c in cells
    ]


def _own_kernel_files(tmp: Path) -> tuple[Path, Path, Path]:
    """bookworm's cloud kernel as a user's own build: its bzImage (a copy with bytes appended,
    so its AKI is new, not the catalogue's), its modules tree, and a build tree made of its
    headers' Module.symvers, .config, Makefile and include/ (Debian's links to the kbuild
    package left out)."""
    from builder.build.kernel import kernel_by_ref
    from builder.modules.headers import unpacked_headers

    k = kernel_by_ref("debian-cloud")
    vmlinuz = tmp / "bzImage"
    vmlinuz.write_bytes(k.vmlinuz.read_bytes() + b"\0" * 64)
    headers, tree = unpacked_headers(k), tmp / "build"
    tree.mkdir()
    for name in (".config", "Makefile", "Module.symvers"):
        (tree / name).write_bytes((headers / name).read_bytes())
    shutil.copytree(headers / "include", tree / "include", symlinks=True)
    # Debian's says the upstream version (6.1.192); a build tree of one's own says its release
    (tree / "include/config/kernel.release").write_text(k.release + "\n")
    return vmlinuz, k.modules_dir, tree


def test_register_kernel_headers_gives_own_kernels_the_verdict_and_rebuild(
    built, tmp_path: Path
) -> None:
    home, ami, _ = built
    env = {"AMILAB_HOME": str(home)}
    vmlinuz, modules, tree = _own_kernel_files(tmp_path)
    # a build tree without Module.symvers: one line, exit 2, nothing stored or registered
    empty = tmp_path / "empty"
    empty.mkdir()
    kernels_before = images(home, "kernel")
    bad = run_amilab("register-kernel", "--vmlinuz", str(vmlinuz), "--modules", str(modules),
                     "--headers", str(empty), env=env, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no Module.symvers" in bad.stderr
    assert images(home, "kernel") == kernels_before
    assert not (home / "kernel-headers").exists()
    result = run_amilab("register-kernel", "--vmlinuz", str(vmlinuz), "--modules", str(modules),
                        "--headers", str(tree), "--name", "own-6.1", "--json", env=env,
                        timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    aki = json.loads(result.stdout)["Images"][0]
    check = run_amilab("modules", "check", ami["ImageId"], "--kernel", aki["ImageId"], "--json",
                       env=env, timeout=300)  # fmt: skip
    cells = json.loads(check.stdout)["Cells"]
    assert {c["Class"] for c in cells} == {"needs-rebuild"}, cells
    assert all(aki["KernelRelease"] in c["Evidence"][0] for c in cells)
    # the rebuild runs against that tree, which cannot build these modules (a cloud kernel:
    # v4l2loopback's dkms.conf says BUILD_EXCLUSIVE CONFIG_VIDEO_DEV, and Debian's Makefile
    # includes a -common tree this one lacks): module-build-failed with DKMS's or make's
    # lines naming the tree's /lib/modules/<release>/build, nothing registered
    count = len(images(home, "machine"))
    add = run_amilab("add-modules", ami["ImageId"], "--kernel", aki["ImageId"], env=env,
                     timeout=900)  # fmt: skip
    assert add.returncode == 1, add.stderr
    assert "module-build-failed: " in add.stderr and aki["KernelRelease"] in add.stderr
    assert len(add.stderr.strip().splitlines()) > 1, add.stderr
    assert f"/lib/modules/{aki['KernelRelease']}/build" in add.stderr, add.stderr
    assert len(images(home, "machine")) == count
    print(add.stderr.strip())


def test_smoke_loads_v4l2loopback_from_updates_dkms(built) -> None:
    """One boot: v4l2loopback from updates/dkms with /dev/video0, hello from extra; and the
    CRC fixture refused by the kernel itself, dmesg naming the symbol the static verdict
    names (the only check that fails)."""
    home, ami, _ = built
    result = run_amilab("smoke", ami["ImageId"], "--json", env={"AMILAB_HOME": str(home)},
                        timeout=600)  # fmt: skip
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    checks = {c["Name"]: c for c in report["Checks"]}
    failed = [n for n, c in checks.items() if not c["Passed"]]
    assert result.returncode == 1 and failed == [f"out-of-tree-{CRC}"], json.dumps(
        report["Checks"], indent=1
    )
    crc = checks[f"out-of-tree-{CRC}"]
    said = f"{crc['Actual']} {crc['Detail']}"
    assert "modprobe failed" in crc["Actual"], crc
    assert f"{CRC}: disagrees about version of symbol {CRC_SYMBOL}" in said, crc
    v4l2 = checks["out-of-tree-v4l2loopback"]
    assert v4l2["Passed"] and "/updates/dkms/v4l2loopback.ko" in v4l2["Actual"], v4l2
    assert "probe ok: test -c /dev/video0" in v4l2["Detail"] and "taint" in v4l2["Detail"]
    assert checks["out-of-tree-hello"]["Passed"], checks["out-of-tree-hello"]
    assert "/extra/hello.ko" in checks["out-of-tree-hello"]["Actual"]
    print(f"smoke: {report['Seconds']:.1f} s, SSH after {report['SecondsToSsh']:.1f} s")


# --- add-modules: the image's modules rebuilt for other kernels ------------------------------
# The three cloud kernels (no V4L2 in them, and built with bullseye's, trixie's and
# sid's gcc), and bookworm-backports' generic kernel, built with bookworm's own gcc-12: the
# one where a rebuild can succeed on this bookworm image.
REBUILD_KERNELS = (
    "debian-cloud-bullseye",
    "debian-cloud-trixie",
    "debian-cloud-sid",
    "debian-generic-bookworm-backports",
)


def _release(home: Path, name: str) -> str:
    listed = run_amilab("kernels", "--json", env={"AMILAB_HOME": str(home)}, timeout=300)
    return next(k["KernelRelease"] for k in json.loads(listed.stdout)["Kernels"]
                if k["Name"] == name)  # fmt: skip


@pytest.fixture(scope="module")
def rebuilt(built) -> dict[str, tuple[subprocess.CompletedProcess[str], str, float]]:
    """add-modules of the v4l2loopback image with each kernel: (result, release, seconds),
    the source's disk digest checked unchanged and no AMI registered by a failed run."""
    home, ami, _ = built
    env = {"AMILAB_HOME": str(home)}
    disk = Path(ami["ImageLocation"])
    before = sparse_sha256(disk)
    out = {}
    for name in REBUILD_KERNELS:
        count = len(images(home, "machine"))
        t0 = time.monotonic()
        result = run_amilab("add-modules", ami["ImageId"], "--kernel", name, "--json",
                            env=env, timeout=1800)  # fmt: skip
        out[name] = (result, _release(home, name), time.monotonic() - t0)
        if result.returncode != 0:
            assert len(images(home, "machine")) == count, f"{name}: an AMI was registered"
    assert sparse_sha256(disk) == before, "add-modules changed the source AMI's disk"
    return out


@pytest.mark.parametrize("name", REBUILD_KERNELS)
def test_add_modules_rebuilds_or_fails_with_the_compilers_lines(built, rebuilt, name) -> None:
    home, ami, _ = built
    result, release, seconds = rebuilt[name]
    print(f"add-modules --kernel {name} ({release}): exit {result.returncode} in {seconds:.1f} s")
    if result.returncode == 0:
        new = json.loads(result.stdout)["Images"][0]
        mods = [m for m in new["amilab:OutOfTreeModules"] if m["KernelRelease"] == release]
        by_name = {m["Name"]: m for m in mods}
        assert set(by_name) == {"v4l2loopback", "hello"}, mods
        assert by_name["v4l2loopback"]["Path"].startswith(f"/lib/modules/{release}/updates/dkms/")
        assert by_name["hello"]["Path"] == f"/lib/modules/{release}/extra/hello.ko"
        assert new["ImageId"] != ami["ImageId"]
        return
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    first = message.splitlines()[0]
    print(message)
    assert "module-build-failed: " in first and release in first, message
    assert any(m in first for m in ("v4l2loopback", "hello", "linux-headers")), message
    if "compiler mismatch" in first:  # the headers' gcc is not in the image: it says which
        assert re.search(r"needs \S*(gcc|clang)\S*.*which the image lacks \(it has gcc-\d+", first)
    else:  # the compiler's own lines follow
        assert len(message.splitlines()) > 1 and re.search(r"error|Error \d", message), message


# v4l2loopback rebuilds on none of those (three compilers the image lacks; 0.12.7 calls
# strlcpy, gone by 6.12), and the catalogue has no other bookworm-built kernel with V4L2. A
# rebuild that succeeds: a DKMS module with no V4L2 dependency (acpi_call) and the Kbuild tree
# on bookworm's cloud kernel, rebuilt for bookworm-backports' cloud kernel (gcc-12 too).
REBUILDABLE = """\
images:
  - name: acpi-call-dkms
    elements: [ec2-base]
    kernel: debian-cloud
    dkms: [acpi-call-dkms]
    extra-modules: [hello]
    disk: {size: 2G, formats: [raw]}
    checks:
      metadata: false
      probes: {acpi_call: test -e /proc/acpi/call}
"""
REBUILD_TO = "debian-cloud-bookworm-backports"


@pytest.fixture(scope="module")
def rebuildable(built) -> tuple[dict, subprocess.CompletedProcess[str], str]:
    """That image built in the same home, and add-modules of it with REBUILD_TO."""
    home, _, _ = built
    folder = home.parent
    (folder / "rebuildable.yaml").write_text(REBUILDABLE)  # hello/ is beside it already
    ami = build(folder / "rebuildable.yaml", home)["Images"][0]
    result = run_amilab("add-modules", ami["ImageId"], "--kernel", REBUILD_TO, "--json",
                        env={"AMILAB_HOME": str(home)}, timeout=1800)  # fmt: skip
    return ami, result, _release(home, REBUILD_TO)


def test_a_rebuilt_ami_loads_its_modules_from_updates_dkms(built, rebuildable) -> None:
    """The AMI the rebuild made: its modules' static verdict on that kernel is `loads`, and
    its smoke with that kernel loads them (acpi_call from updates/dkms, hello from extra).
    Whichever way the rebuild goes is asserted with its evidence."""
    home, _, _ = built
    env = {"AMILAB_HOME": str(home)}
    ami, result, release = rebuildable
    if result.returncode != 0:  # a failure must still be module-build-failed with its lines
        assert result.returncode == 1 and "module-build-failed: " in result.stderr, result.stderr
        pytest.fail(f"the rebuild for {release} failed:\n{result.stderr}")
    new = json.loads(result.stdout)["Images"][0]
    mods = {m["Name"]: m for m in new["amilab:OutOfTreeModules"] if m["KernelRelease"] == release}
    assert mods["acpi_call"]["Path"].startswith(f"/lib/modules/{release}/updates/dkms/"), mods
    assert mods["hello"]["Path"] == f"/lib/modules/{release}/extra/hello.ko"
    static = run_amilab("modules", "check", new["ImageId"], "--kernel", REBUILD_TO, "--json",
                        env=env, timeout=600)  # fmt: skip
    cells = json.loads(static.stdout)["Cells"]
    assert {c["BuiltFor"] for c in cells} == {release}, cells
    assert static.returncode == 0 and all(c["Class"] == "loads" for c in cells), cells
    smoke = run_amilab("smoke", new["ImageId"], "--kernel", REBUILD_TO, "--json", env=env,
                       timeout=SMOKE_TIMEOUT)  # fmt: skip
    report = json.loads(smoke.stdout)
    report = report[0] if isinstance(report, list) else report
    checks = {c["Name"]: c for c in report["Checks"]}
    acpi = checks["out-of-tree-acpi_call"]
    assert acpi["Passed"] and f"/{release}/updates/dkms/acpi_call.ko" in acpi["Actual"], acpi
    assert "probe ok" in acpi["Detail"], acpi
    assert checks["out-of-tree-hello"]["Passed"], checks["out-of-tree-hello"]
    assert f"/{release}/extra/hello.ko" in checks["out-of-tree-hello"]["Actual"]
    assert smoke.returncode == 0, json.dumps(report["Checks"], indent=1)


# --- the matrix: static verdicts beside the boot's ------------------------------------------
MATRIX_KERNELS = ("own", "debian-cloud-bullseye", "debian-cloud-trixie", "debian-cloud-sid")


def test_matrix_static_and_boot_verdicts_agree(built, rebuilt, rebuildable, tmp_path: Path) -> None:
    """One matrix run: the v4l2loopback image × its own, bullseye's, trixie's and sid's
    kernels (before add-modules), and each AMI add-modules made × the kernel it was rebuilt
    for (after: none of v4l2loopback's rebuilds succeeds, the acpi_call image's does): each
    cell's module column has the static class and the boot's result, and they agree."""
    home, ami, _ = built
    made = [(r, name) for name, (r, _, _) in rebuilt.items() if r.returncode == 0]
    if rebuildable[1].returncode == 0:
        made.append((rebuildable[1], REBUILD_TO))
    after = [(json.loads(r.stdout)["Images"][0]["ImageId"], name) for r, name in made]
    spec = {
        "images": [ami["ImageId"]],
        "kernels": list(MATRIX_KERNELS),
        "include": [{"image": image, "kernel": kernel} for image, kernel in after],
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(json.dumps(spec))
    out, html_file, junit = tmp_path / "m.json", tmp_path / "m.html", tmp_path / "m.xml"
    result = run_amilab("matrix", str(path), "--jobs", "2", "--json-file", str(out),
                        "--html", str(html_file), "--junit", str(junit),
                        env={"AMILAB_HOME": str(home)}, timeout=3600)  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]
    doc = json.loads(out.read_text())
    cells = doc["Cells"]
    assert len(cells) == len(MATRIX_KERNELS) + len(after)
    for c in cells:
        assert c["Status"] in ("PASS", "FAIL"), (c["Cell"], c["Class"], c["Evidence"])
        mods = {m["Module"]: m for m in c["Modules"]}
        ours = c["ImageId"] == ami["ImageId"]
        want = {"v4l2loopback", "hello", CRC} if ours else {"acpi_call", "hello"}
        assert set(mods) == want, c["Cell"]
        for m in mods.values():
            print(f"{c['Cell']}: {m['Module']}: static {m['Static']}, boot {m['Boot']}")
            assert m["Boot"] and m["Agree"] is True, (c["Cell"], m)
    own = next(c for c in cells if c["Kernel"] == "own")
    assert {m["Module"]: m["Static"] for m in own["Modules"]} == {
        "v4l2loopback": "loads", "hello": "loads", CRC: f"refused: symbol {CRC_SYMBOL} disagrees"
    }  # fmt: skip
    for c in cells:
        if c["Kernel"] != "own" and c["ImageId"] == ami["ImageId"]:
            assert all(m["Static"] == "needs-rebuild" for m in c["Modules"]), c["Cell"]
        elif c["ImageId"] != ami["ImageId"]:  # rebuilt for the kernel it boots
            assert all(m["Static"] == "loads" for m in c["Modules"]), c["Cell"]
    assert doc["Disagreements"] == [] and doc["Summary"]["Disagreements"] == 0
    page = html_file.read_text()
    assert 'data-module="v4l2loopback"' in page and 'data-agree="true"' in page
    assert 'name="module v4l2loopback"' in junit.read_text()


def test_static_only_matrix_starts_no_qemu(built, tmp_path: Path) -> None:
    """--static-only over every x86_64 kernel of the catalogue: the images × kernels × modules
    table, with every qemu-system binary on PATH a tripwire that records being started."""
    home, ami, _ = built
    env = {"AMILAB_HOME": str(home)}
    listed = json.loads(run_amilab("kernels", "--json", env=env, timeout=300).stdout)["Kernels"]
    x86 = [k["Name"] for k in listed if k["Architecture"] == "x86_64"]
    trap, tripped = tmp_path / "bin", tmp_path / "qemu-started"
    trap.mkdir()
    for name in ("qemu-system-x86_64", "qemu-system-i386", "qemu-system-aarch64"):
        (trap / name).write_text(f'#!/bin/sh\necho "$0 $*" >> {tripped}\nexit 1\n')
        (trap / name).chmod(0o755)
    args = [a for k in x86 for a in ("--kernel", k)]
    t0 = time.monotonic()
    result = run_amilab("matrix", "--static-only", "--image", ami["ImageId"], *args, "--json",
                        env={**env, "PATH": f"{trap}:{os.environ['PATH']}"},
                        timeout=3600)  # fmt: skip
    seconds = time.monotonic() - t0
    assert result.returncode == 1, result.stderr[-3000:]  # other kernels' cells need a rebuild
    assert not tripped.exists(), tripped.read_text()
    doc = json.loads(result.stdout)
    assert doc["Accelerator"] == "static-only"
    cells = {c["Kernel"]: c for c in doc["Cells"]}
    assert set(cells) == set(x86)
    for name, c in cells.items():
        classes = {m["Module"]: m["Static"] for m in c["Modules"]}
        crc = classes.pop(CRC)
        assert set(classes) == {"v4l2loopback", "hello"}, name
        if c["KernelRef"] == ami["KernelId"]:
            assert set(classes.values()) == {"loads"}, (name, classes)
            assert crc == f"refused: symbol {CRC_SYMBOL} disagrees", name
        else:
            assert set(classes.values()) | {crc} == {"needs-rebuild"}, (name, classes, crc)
    print(f"matrix --static-only: {len(cells)} kernels × 3 modules in {seconds:.1f} s (CLI)")
