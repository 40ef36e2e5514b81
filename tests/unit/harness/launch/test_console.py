"""Console watching: the most specific failure reason, milestones, incremental reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.launch.console import ConsoleWatcher
from harness.launch.steps import boot_phases

ROOT_NOT_FOUND = """\
[    6.79] Run /init as init process\r
amilab-ramdisk: ROOT NOT FOUND: root=LABEL=cloudimg-rootfs (waited 10 s); block devices: none\r
[   17.00] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r
"""


def _watch(tmp_path: Path, *chunks: str) -> ConsoleWatcher:
    log = tmp_path / "console.log"
    w = ConsoleWatcher(log)
    assert w.poll() is None  # not there yet: not a failure
    for chunk in chunks:
        with open(log, "a") as f:
            f.write(chunk)
        w.poll()
    return w


def test_ramdisk_reason_beats_the_panic_it_causes(tmp_path: Path) -> None:
    w = _watch(tmp_path, ROOT_NOT_FOUND)
    failure = w.failure()
    assert failure is not None and failure.reason == "ramdisk could not find the root"
    assert "root=LABEL=cloudimg-rootfs" in failure.describe()
    assert "Kernel panic" in w.tail()


def test_vfs_and_plain_panic(tmp_path: Path) -> None:
    cases = (
        (
            "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n",
            "unable to mount root",
        ),
        ("Kernel panic - not syncing: Fatal exception\n", "kernel panic"),
    )
    for n, (text, reason) in enumerate(cases):
        d = tmp_path / str(n)
        d.mkdir()
        failure = _watch(d, text).failure()
        assert failure is not None and failure.reason == reason


def test_init_failures(tmp_path: Path) -> None:
    for n, text in enumerate(
        (
            "[ 1.0] Kernel panic - not syncing: No working init found.\n",
            "You are in emergency mode. After logging in, type ...\n",
            "amilab-ramdisk: NO INIT: none of /sbin/init on root=LABEL=x\n",
            "amilab-ramdisk: CANNOT MOUNT ROOT: root=LABEL=x on /dev/vda\n",
        )
    ):
        d = tmp_path / str(n)
        d.mkdir()
        f = _watch(d, text).failure()
        assert f is not None, text


def test_a_normal_boot_is_no_failure(tmp_path: Path) -> None:
    w = _watch(
        tmp_path,
        "[    0.000000] Linux version 6.1.0-56-cloud-amd64\r\n",
        "[    6.79] Run /init as init process\r\n",
        "amilab-ramdisk: carries modules for 6.1.0-55 but the kernel is 6.1.0-56; loading none\n",
        "[   11.61] systemd[1]: systemd 252 running in system mode\r\n",
        "[  OK  ] Failed to start foo.service\r\n",
    )
    assert w.failure() is None
    assert list(w.milestones) == ["kernel", "ramdisk", "init"]


def test_reads_only_what_is_new(tmp_path: Path) -> None:
    w = _watch(tmp_path, "a" * 10, "b" * 10)
    assert w.text == "a" * 10 + "b" * 10


def test_boot_phases() -> None:
    phases = boot_phases({"kernel": 1.0, "ramdisk": 4.0, "init": 6.0}, 14.0, 14.5)
    assert phases == {"firmware": 1.0, "kernel": 3.0, "ramdisk": 2.0, "init": 8.0, "login": 0.5}
    quiet = boot_phases({}, 9.0, 9.25)
    assert quiet == {"init": 9.0, "login": 0.25}


def test_a_wait_that_never_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.launch import console

    w = _watch(tmp_path, "[    5.1] Waiting for root device /dev/vda...\n")
    assert w.failure() is None  # it may still come
    monkeypatch.setattr(console, "STALL_SECONDS", 0.0)
    failure = w.failure()
    assert failure is not None and "/dev/vda" in failure.describe()
    with open(tmp_path / "console.log", "a") as f:
        f.write("[    6.0] EXT4-fs (vda): mounted filesystem\n")
    w.poll()
    assert w.failure() is None  # it came after all


def _whole_log_failure(text: str) -> tuple[str, str] | None:
    """What a search of the whole log gives: the first of FAILURES that matches anywhere."""
    from harness.launch.console import FAILURES

    text = text.replace("\r", "")
    for reason, pattern in FAILURES:
        if m := pattern.search(text):
            return reason, m.group(0)
    return None


@pytest.mark.parametrize("size", [1, 7, 40, 10_000])
def test_scanning_only_what_is_new_gives_the_whole_logs_answer(tmp_path: Path, size: int) -> None:
    """Chunks cut anywhere (mid-line too), a less specific failure seen before the more
    specific one: the incremental scan answers as a scan of the whole log would."""
    log = "[    1.0] Linux version 6.1.0\r\n" * 50
    log += "[   17.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x100\r\n"
    log += "amilab-ramdisk: ROOT NOT FOUND: root=LABEL=x (waited 10 s); block devices: none\r\n"
    chunks = [log[i : i + size] for i in range(0, len(log), size)]
    w = _watch(tmp_path, *chunks)
    got = w.failure()
    assert got is not None and (got.reason, got.line) == _whole_log_failure(log)


def test_a_failure_line_still_being_written_is_reported_whole(tmp_path: Path) -> None:
    w = _watch(tmp_path, "[ 2.0] Kernel panic - not syncing: VFS: Unable to mou")
    first = w.failure()
    assert first is not None and first.line.endswith("Unable to mou")
    with open(tmp_path / "console.log", "a") as f:
        f.write("nt root fs on unknown-block(0,0)\r\n")
    w.poll()
    last = w.failure()
    assert last is not None and last.reason == "unable to mount root"
    assert last.line.endswith("unknown-block(0,0)")


def test_a_kernel_that_stops_printing_before_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chatty kernel gone silent before init is a stall; a `quiet` one (a few lines, then
    nothing until the login prompt) is not, nor is a kernel that reached init."""
    from harness.launch import console

    kernel = "[    0.0] Linux version 6.1.0-56-cloud-amd64\n"
    kernel += "".join(f"[    1.{i:03d}] driver {i} registered\n" for i in range(120))
    kernel += "[    2.27] sched_clock: Marking stable (2284179490, -13751920)\n"
    w = _watch(tmp_path, kernel)
    assert w.failure() is None  # not silent long enough yet
    monkeypatch.setattr(console, "KERNEL_STALL_SECONDS", 0.0)
    failure = w.failure()
    assert failure is not None and failure.reason.startswith(console.KERNEL_STALL)
    assert failure.line.startswith("[    2.27] sched_clock: Marking stable")

    (tmp_path / "quiet").mkdir()
    quiet = _watch(tmp_path / "quiet", "[    0.0] Linux version 6.1.0\n[    0.5] a warning\n")
    assert quiet.failure() is None
    with open(tmp_path / "console.log", "a") as f:
        f.write("[    3.0] Run /init as init process\n")
    w.poll()
    assert w.failure() is None  # it reached init: what follows is init's to explain


def test_sshd_started_is_read_from_systemds_status_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("[  OK  ] Started ssh-host-keys.service - Generate this instance's SSH key.\n")
    watcher = ConsoleWatcher(log)
    watcher.poll()
    assert not watcher.sshd_started()
    with log.open("a") as f:
        f.write("[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mssh.service\x1b[0m - OpenBSD Secure "
                "Shell server.\r\n")  # fmt: skip
    watcher.poll()
    assert watcher.sshd_started()


@pytest.mark.parametrize(
    "line",
    [
        "[  OK  ] Started sshd.service - OpenSSH server daemon.\n",
        "[  OK  ] Listening on ssh.socket - OpenBSD Secure Shell server socket.\n",
        "[  OK  ] Started dropbear.service - Lightweight SSH server.\n",
    ],
)
def test_sshd_started_from_other_distributions_units(tmp_path: Path, line: str) -> None:
    w = _watch(tmp_path, "[  OK  ] Started sshd-keygen.service - host keys.\n")
    assert not w.sshd_started()
    w = _watch(tmp_path, line)
    assert w.sshd_started()


def test_whether_the_console_will_announce_sshd(tmp_path: Path) -> None:
    """Expected while firmware and kernel print and init has not shown itself, and once
    systemd reports units; not for an init that reports nothing on the console."""
    log = tmp_path / "console.log"
    w = ConsoleWatcher(log)
    w.poll()
    assert not w.reports_units()  # nothing printed yet (a quiet boot looks the same)
    boot = [
        ("UEFI firmware (version  built at 13:10:49 on Nov  5 2024)\r\n", True),
        ("[    0.000000] Linux version 6.1.0-57-cloud-arm64 (gcc-12)\r\n", True),
        ("[    2.900000] Run /init as init process\r\n", False),  # what will this init say?
        ("[    9.028278] systemd[1]: Reached target swap.target - Swaps.\r\n", True),
        ("Debian GNU/Linux 12 debian ttyS0\r\n", True),
    ]
    for text, expected in boot:
        with log.open("a") as f:
            f.write(text)
        w.poll()
        assert w.reports_units() == expected, text
    other = tmp_path / "other.log"
    other.write_text("[    0.0] Linux version 6.1\n[    3.0] Run /sbin/init as init process\n"
                     "INIT: version 3.06 booting\n")  # fmt: skip
    sysv = ConsoleWatcher(other)
    sysv.poll()
    assert not sysv.reports_units()
