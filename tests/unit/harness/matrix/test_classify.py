"""Verdicts from what a smoke run left: status, class, and evidence lines with their numbers."""

from __future__ import annotations

from typing import Any

from harness.matrix import classify as c
from harness.matrix.classify import Observed, classify, excerpt
from harness.matrix.results import ERROR, FAIL, PASS, Evidence

BOOT = [
    "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
    "[    0.000000] Linux version 6.1.0-41-cloud-amd64 (debian-kernel@lists.debian.org)",
    "[    1.200000] Run /init as init process",
]


def report(failure: str | None = None, checks: list[dict[str, Any]] | None = None) -> dict:
    passed = failure is None and bool(checks) and all(x["Passed"] for x in checks or [])
    return {"Passed": passed, "Failure": failure, "Checks": checks or []}


def check(name: str, passed: bool, expected: str = "", actual: str = "", detail: str = "") -> dict:
    return {"Name": name, "Passed": passed, "Expected": expected, "Actual": actual,
            "Detail": detail}  # fmt: skip


def console(*extra: str) -> str:
    return "\n".join(BOOT + list(extra)) + "\n"


def test_pass() -> None:
    v = classify(Observed(report(checks=[check("kernel-release", True)]), console()))
    assert v.status == PASS and v.klass == "" and v.evidence == []


def test_ramdisk_without_the_disk_driver_names_its_line() -> None:
    line = ("amilab-ramdisk: ROOT NOT FOUND: root=LABEL=cloudimg-rootfs (waited 10 s); "
            "block devices: none; modules loaded: 5, refused: xen-blkfront.ko")  # fmt: skip
    text = console(line, "[   14.1] reboot: Power down")
    v = classify(Observed(report("ramdisk could not find the root: " + line), text))
    assert (v.status, v.klass) == (FAIL, c.NO_DRIVER)
    assert v.evidence[0] == Evidence(4, line)


def test_root_not_found_with_disks_present_is_not_a_driver_problem() -> None:
    line = ("amilab-ramdisk: ROOT NOT FOUND: root=LABEL=other (waited 10 s); "
            "block devices: vda(LABEL=cloudimg-rootfs); modules loaded: 6")  # fmt: skip
    v = classify(Observed(report("ramdisk could not find the root"), console(line)))
    assert (v.status, v.klass) == (FAIL, "root device not found")


def test_kernel_panic() -> None:
    text = console("[    2.0] Kernel panic - not syncing: VFS: Unable to mount root fs on 0:0")
    v = classify(Observed(report("unable to mount root: ..."), text))
    assert v.status == FAIL and v.klass == "root filesystem cannot be mounted"
    assert v.evidence[0].line == 4
    text = console("[    2.0] Kernel panic - not syncing: Fatal exception")
    v = classify(Observed(report("kernel panic: ..."), text))
    assert (v.klass, v.evidence[0].line) == ("kernel panic", 4)


def test_emergency_mode_and_missing_key() -> None:
    v = classify(Observed(report("init failed"), console("You are in emergency mode. After")))
    assert v.klass == "init failed / emergency mode"
    v = classify(Observed(report("x"), console("ec2-fetch-ssh-key: no key from the service")))
    assert (v.status, v.klass) == (FAIL, "no key installed")


def test_qemu_killed_from_outside_is_an_error() -> None:
    failure = "QEMU exited before SSH came up (exit status -9)"
    v = classify(Observed(report(failure), console()))
    assert (v.status, v.klass) == (ERROR, c.QEMU_DIED)
    assert v.evidence[0] == Evidence(0, failure) and v.evidence[-1].line == 3


def test_guest_that_powers_off_by_itself_fails() -> None:
    v = classify(Observed(report("QEMU exited before SSH came up (exit status 0)"), console()))
    assert (v.status, v.klass) == (FAIL, c.OFF)


def test_timeouts_by_what_the_console_shows() -> None:
    timeout = "no SSH login within 300 s (last: no SSH banner yet)"
    assert classify(Observed(report(timeout), "")).klass == c.SILENT
    assert classify(Observed(report(timeout), "")).status == ERROR
    v = classify(Observed(report(timeout), console("[  OK  ] Started ssh.service")))
    assert (v.status, v.klass) == (ERROR, c.TRANSPORT)
    assert v.evidence[1] == Evidence(4, "[  OK  ] Started ssh.service")
    v = classify(Observed(report(timeout), console("[  5.0] random: crng init done")))
    assert (v.status, v.klass) == (FAIL, c.NO_NETWORK)


def test_failed_checks() -> None:
    tree = check("modules-tree", False, "/lib/modules/5.10.0-9-cloud-amd64", "missing",
                 "booted 5.10.0-9-cloud-amd64 but the image has no /lib/modules/…")  # fmt: skip
    v = classify(Observed(report(checks=[check("kernel-release", True), tree]), console()))
    assert (v.status, v.klass) == (FAIL, c.MODULE_TREE)
    assert v.evidence[0].line == 0 and "modules-tree" in v.evidence[0].text
    assert v.evidence[1].line == 2  # the kernel that booted
    v = classify(Observed(report(checks=[check("modprobe-vfat", False, "loaded", "x")]), ""))
    assert v.klass == c.MODULE_LOAD
    v = classify(Observed(report(checks=[check("metadata-kernel-id", False)]), ""))
    assert v.klass == c.METADATA


def test_harness_errors() -> None:
    v = classify(Observed({}, "", error="QEMU did not start: could not open disk"))
    assert (v.status, v.klass) == (ERROR, c.HARNESS)


def test_excerpt_is_numbered_around_the_evidence() -> None:
    text = "\n".join(f"line {n}" for n in range(1, 101))
    out = excerpt(text, [Evidence(0, "x"), Evidence(60, "line 60")], count=5)
    assert out.splitlines() == [f"{n:5d}  line {n}" for n in range(58, 63)]


def test_a_kernel_stalled_before_init_is_an_error_to_retry() -> None:
    last = "[    2.27] sched_clock: Marking stable (2284179490, -13751920)"
    failure = f"the kernel stopped before init (no output for 90 s): {last}"
    v = classify(Observed(report(failure), console(last)))
    assert (v.status, v.klass) == (ERROR, c.KERNEL_STALLED)
    assert v.evidence[0].text == failure and any(e.text == last for e in v.evidence)


def test_a_kernel_qemu_refuses_is_the_kernels_fault() -> None:
    from harness.matrix.classify import KERNEL_REFUSED, Observed, classify

    v = classify(Observed({}, "", error="QEMU did not start: qemu: invalid kernel header"))
    assert (v.status, v.klass) == ("FAIL", KERNEL_REFUSED)
    assert v.evidence[0].text.endswith("invalid kernel header")
    assert classify(Observed({}, "", error="QEMU did not start: no /dev/kvm")).status == "ERROR"
