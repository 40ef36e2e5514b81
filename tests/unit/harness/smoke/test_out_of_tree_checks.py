"""The out-of-tree module check's verdict from the guest's output (what the script prints)."""

from __future__ import annotations

from harness.smoke.checks import builtin_checks, out_of_tree_module, taint_letters

MODULE = {"Name": "v4l2loopback", "KernelRelease": "6.1.0-57-amd64",
          "Path": "/lib/modules/6.1.0-57-amd64/updates/dkms/v4l2loopback.ko"}  # fmt: skip
LOADED = (
    "modprobe ok\nfile /lib/modules/6.1.0-57-amd64/updates/dkms/v4l2loopback.ko\nloaded\n"
    "taint 12288\ndmesg [   23.6] v4l2loopback: module verification failed: signature and/or "
    "required key missing - tainting kernel\n"
)


def test_loaded_from_updates_dkms_with_the_probe() -> None:
    c = out_of_tree_module(MODULE, "test -c /dev/video0")
    r = c.evaluate(0, LOADED + "probe ok\n")
    assert r.passed and r.name == "out-of-tree-v4l2loopback"
    assert r.actual == f"loaded from {MODULE['Path']}"
    # an unsigned module's note on a kernel that does not enforce signatures is the taint (E)
    assert "taint 12288 (OE)" in r.detail and "module verification failed" in r.detail
    assert "test -c /dev/video0" in c.command


def test_crc_refusal_names_the_symbol() -> None:
    out = ("modprobe failed: modprobe: ERROR: could not insert 'v4l2loopback': Exec format "
           "error\nfile /lib/modules/6.1.0-57-amd64/updates/dkms/v4l2loopback.ko\ntaint 0\n"
           "dmesg [ 9.1] v4l2loopback: disagrees about version of symbol video_ioctl2\n")
    r = out_of_tree_module(MODULE).evaluate(0, out)
    assert not r.passed and r.actual.startswith("modprobe failed")
    assert "dmesg: [ 9.1] v4l2loopback: disagrees about version of symbol video_ioctl2" in r.detail


def test_an_in_tree_module_of_the_same_name_is_a_failure() -> None:
    out = ("modprobe ok\nfile /lib/modules/6.1.0-57-amd64/kernel/drivers/media/v4l2loopback.ko\n"
           "loaded\ntaint 0\n")
    r = out_of_tree_module(MODULE).evaluate(0, out)
    assert not r.passed and "not the out-of-tree copy" in r.actual


def test_failed_probe() -> None:
    r = out_of_tree_module(MODULE, "test -c /dev/video0").evaluate(0, LOADED + "probe failed\n")
    assert not r.passed and r.actual == "probe failed: test -c /dev/video0"


def test_builtin_checks_add_one_per_module_with_its_probe() -> None:
    checks = builtin_checks("r", None, None, {"probes": {"v4l2loopback": "true"}}, [MODULE])
    assert "out-of-tree-v4l2loopback" in [c.name for c in checks]
    assert taint_letters(12288) == "OE" and taint_letters(1) == "P"
