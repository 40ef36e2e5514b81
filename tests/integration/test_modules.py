"""Out-of-tree modules end to end (issue #27): a recipe with Debian's v4l2loopback-dkms and a
Kbuild source tree builds; `modules check` classifies them without booting (the image's own
kernel: loads; another catalogue kernel: needs-rebuild); one boot's smoke finds v4l2loopback
loaded from updates/dkms with /dev/video0 present. A DKMS package the suite lacks is exit 2.

The cloud kernel has no V4L2 (CONFIG_MEDIA_SUPPORT is off), so the image boots Debian's
generic kernel, which v4l2loopback's dependency videodev is part of."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import run_amilab
from tests.integration.builds import build, debugfs, images

pytestmark = pytest.mark.integration

RECIPE = """\
images:
  - name: v4l2-dkms
    elements: [ec2-base]
    kernel: debian-generic
    dkms: [{dkms}]
    extra-modules: [hello]
    disk: {{size: 2G, formats: [raw]}}
    checks:
      metadata: false
      probes: {{v4l2loopback: test -c /dev/video0, hello: grep -q '^hello ' /proc/modules}}
"""
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
    path = tmp / f"{dkms}.yaml"
    path.write_text(RECIPE.format(dkms=dkms))
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
    assert len(lines) == 1 and "dkms[0]: no-such-module-dkms is not in the bookworm archive" in (
        lines[0]
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
    assert {c["Module"] for c in own} == {"v4l2loopback", "hello"}
    assert all(c["Class"] == "loads" for c in own), own
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


def test_smoke_loads_v4l2loopback_from_updates_dkms(built) -> None:
    home, ami, _ = built
    result = run_amilab("smoke", ami["ImageId"], "--json", env={"AMILAB_HOME": str(home)},
                        timeout=600)  # fmt: skip
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    checks = {c["Name"]: c for c in report["Checks"]}
    assert result.returncode == 0, json.dumps(report["Checks"], indent=1)
    v4l2 = checks["out-of-tree-v4l2loopback"]
    assert v4l2["Passed"] and "/updates/dkms/v4l2loopback.ko" in v4l2["Actual"], v4l2
    assert "probe ok: test -c /dev/video0" in v4l2["Detail"] and "taint" in v4l2["Detail"]
    assert checks["out-of-tree-hello"]["Passed"], checks["out-of-tree-hello"]
    assert "/extra/hello.ko" in checks["out-of-tree-hello"]["Actual"]
    print(f"smoke: {report['Seconds']:.1f} s, SSH after {report['SecondsToSsh']:.1f} s")
