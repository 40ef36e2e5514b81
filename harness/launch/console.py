"""Watching the serial console log: boot failures and where the boot time goes.

The console says at once what a timeout would only hint at: a kernel panic, a root that
cannot be mounted, amilab's ramdisk not finding the root, init failing. `ConsoleWatcher`
reads what QEMU appended since the last poll, notes the host time at which boot milestones
first appear, and reports the most specific failure it has seen.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# (reason, pattern), most specific first: amilab's ramdisk says ROOT NOT FOUND and then exits,
# which the kernel reports as "Attempted to kill init", so the first match in this order wins.
FAILURES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ramdisk could not find the root", re.compile(r"amilab-ramdisk: ROOT NOT FOUND:.*")),
    ("ramdisk failed", re.compile(r"amilab-ramdisk: [A-Z][A-Z ]+:.*")),
    # the kernel cannot run the image's init: a kernel of another architecture (an i386
    # kernel over an x86_64 tree; ENOEXEC is error -8), said by busybox's switch_root in
    # amilab's ramdisk, or by the kernel itself without a ramdisk
    (
        "init exec format error",
        re.compile(
            r".*can't execute '[^']*': Exec format error.*"
            r"|Failed to execute \S+ \(error -8\).*"
            r"|Starting init: \S+ exists but couldn't execute it \(error -8\).*"
        ),
    ),  # fmt: skip
    (
        "unable to mount root",
        re.compile(r"VFS: Unable to mount root fs.*|[Uu]nable to mount root.*"),
    ),
    (
        "root device not found",
        re.compile(r"ALERT!\s+\S+ does not exist\..*|Gave up waiting for root.*"),
    ),
    (
        "init failed",
        re.compile(
            r"No working init found.*|Requested init \S+ failed.*"
            r"|Attempted to kill init!.*|systemd\[1\]: Freezing execution\..*"
            r"|You are in emergency mode.*|Entering emergency mode.*"
        ),
    ),  # fmt: skip
    ("kernel panic", re.compile(r"Kernel panic - not syncing:.*")),
    # the image's boot agent (elements/ec2-key-agent) gave up: no login will ever work
    ("the image's key agent got no key", re.compile(r"ec2-fetch-ssh-key: no key from.*")),
)

# Waits that never end by themselves: a wait message with nothing after it that shows progress
# (the `progress` pattern) and a silent console for STALL_SECONDS means the boot is stuck
# there (e.g. `rootwait` for a disk whose driver is neither built in nor in a ramdisk).
STALLS: tuple[tuple[str, re.Pattern[str], re.Pattern[str]], ...] = (
    ("the kernel waits for a root device that does not appear",
     re.compile(r"Waiting for root device \S+"),
     re.compile(r"mounted filesystem|VFS: Mounted root|Run /sbin/init|systemd\[1\]")),
)  # fmt: skip
STALL_SECONDS = 20.0

# A kernel that printed its boot (KERNEL_CHATTY lines or more: not a `quiet` one, which says
# almost nothing until the login prompt) and then nothing for KERNEL_STALL_SECONDS, before any
# sign of init. Seen once under TCG (2 vCPUs, another guest beside it): silent after
# "sched_clock: Marking stable" until SSH gave up at 300 s; the same cell boots in 23 s. The
# verdict cannot tell a kernel bug from an emulator hang, so the matrix retries it (ERROR).
KERNEL_STARTED = re.compile(r"Linux version \d")
INIT_REACHED = re.compile(
    r"Run /init|Run /sbin/init|amilab-ramdisk|systemd\[1\]|Welcome to |login:"
)
KERNEL_STALL = "the kernel stopped before init"
KERNEL_STALL_SECONDS = 90.0
KERNEL_CHATTY = 100

# systemd's word that sshd is up (not a phase: the harness opens a fresh SSH probe at once
# rather than at its next PROBE_INTERVAL tick): Debian's and Fedora's units, dropbear, and a
# socket-activated sshd (Ubuntu's ssh.socket)
SSHD_STARTED = re.compile(
    r"Started .*(OpenBSD Secure Shell|OpenSSH server|sshd?\.service|[Dd]ropbear)"
    r"|Listening on .*(sshd?\.socket|OpenBSD Secure Shell server socket)"
)
# systemd reports units on the console (its status lines, or its own log before journald
# starts): it will say when sshd starts, so the harness need not probe for it often
UNITS_REPORTED = re.compile(r"(systemd\[1\]: |\]\s)(Started|Starting|Reached target|Finished) ")

# Milestones whose first appearance (host time) splits the boot into phases.
MILESTONES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel", re.compile(r"Linux version \d")),
    ("ramdisk", re.compile(r"Run /init as init process|Freeing unused kernel")),
    (
        "init",
        re.compile(r"systemd\[1\]|Welcome to |Run /sbin/init as init|amilab-ramdisk: switching"),
    ),
    ("network", re.compile(r"ec2-fetch-ssh-key|Reached target .*Network|systemd-networkd")),
)


@dataclass(frozen=True)
class ConsoleFailure:
    reason: str
    line: str

    def describe(self) -> str:
        return f"{self.reason}: {self.line.strip()}"


class ConsoleWatcher:
    def __init__(
        self,
        path: Path,
        started_at: float | None = None,
        cpu: Callable[[], float | None] | None = None,
    ) -> None:
        self.path = path
        self.started_at = time.monotonic() if started_at is None else started_at
        self._cpu = cpu
        self._offset = 0
        self._text = ""
        # where the next scan starts: the first line not wholly scanned (patterns are
        # line-based). Scanning the whole log on every poll (several a second while waiting
        # for SSH) cost a matrix cell about a CPU second, much of it in `.*`-led patterns.
        self._scanned = 0
        self._found: tuple[int, int] | None = None  # (rank in FAILURES, where it matched)
        self.milestones: dict[str, float] = {}  # name -> seconds after start
        self.cpu_milestones: dict[str, float] = {}  # name -> QEMU's CPU seconds by then
        self._last_output = time.monotonic()
        self._sshd_at: int | None = None  # where SSHD_STARTED matched
        self._reports_units = False

    def reports_units(self) -> bool:
        """Whether the console is expected to say when sshd starts (read as of the last
        poll): it shows the firmware or kernel booting and init has not shown itself yet, or
        systemd reporting units. Not with an init that reports nothing there."""
        if not self._reports_units:
            self._reports_units = UNITS_REPORTED.search(self._text) is not None
        if self._reports_units:
            return True
        return bool(self._text.strip()) and not INIT_REACHED.search(self._text)

    def sshd_started(self) -> bool:
        """Whether the console has said that sshd started (read as of the last poll)."""
        if self._sshd_at is None and (m := SSHD_STARTED.search(self._text)):
            self._sshd_at = m.start()
        return self._sshd_at is not None

    def poll(self) -> ConsoleFailure | None:
        """Read what is new; the failure seen so far, if any."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                new = f.read()
        except FileNotFoundError:
            return None
        if new:
            self._last_output = time.monotonic()
            self._offset += len(new)
            # serial output has CRLF line ends and the odd NUL; only the text matters here
            self._text += new.decode("utf-8", errors="replace").replace("\r", "")
            now = time.monotonic() - self.started_at
            for name, pattern in MILESTONES:
                if name not in self.milestones and pattern.search(self._text, self._scanned):
                    self.milestones[name] = round(now, 2)
                    cpu = self._cpu() if self._cpu else None
                    if cpu is not None:
                        self.cpu_milestones[name] = cpu
        return self.failure()

    def _scan(self) -> None:
        """Search what is new for failures more specific than the one found (FAILURES'
        order), so the result is what a search of the whole log would give."""
        if self._scanned >= len(self._text):
            return
        for rank, (_, pattern) in enumerate(FAILURES):
            if self._found is not None and rank >= self._found[0]:
                break
            if m := pattern.search(self._text, self._scanned):
                self._found = (rank, m.start())
                break
        # the last line may not be complete yet: it is scanned again with what follows
        self._scanned = self._text.rfind("\n") + 1

    def failure(self) -> ConsoleFailure | None:
        self._scan()
        if self._found is not None:
            rank, at = self._found
            reason, pattern = FAILURES[rank]
            # matched again where it did: a line that was still being written is whole now
            m = pattern.match(self._text, at)
            return ConsoleFailure(reason, m.group(0) if m else self._text[at:].split("\n")[0])
        silent = time.monotonic() - self._last_output
        if silent >= STALL_SECONDS:
            for reason, waiting, progress in STALLS:
                if (m := waiting.search(self._text)) and not progress.search(self._text, m.end()):
                    return ConsoleFailure(f"{reason} (no progress for {STALL_SECONDS:.0f} s)",
                                          m.group(0))  # fmt: skip
        if silent >= KERNEL_STALL_SECONDS and (m := KERNEL_STARTED.search(self._text)):
            after = self._text[m.start() :]
            if after.count("\n") >= KERNEL_CHATTY and not INIT_REACHED.search(after):
                last = after.rstrip().rsplit("\n", 1)[-1]
                return ConsoleFailure(
                    f"{KERNEL_STALL} (no output for {KERNEL_STALL_SECONDS:.0f} s)", last
                )
        return None

    @property
    def text(self) -> str:
        return self._text

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self._text.rstrip().splitlines()[-lines:])
