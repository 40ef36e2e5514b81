"""Helper programs that end with the amilab command that started them.

A command killed with SIGKILL cannot stop its children, and a child left running goes on
writing into the command's work-area entry (tar unpacking a base tree, an element's script
in the chroot): the next run, or `fsck --repair`, then finds a leftover whose owner is gone
but cannot remove it while files keep appearing in it. Run under setpriv's parent-death
signal, such a child is SIGKILLed when the thread that started it dies (kept across the exec;
the DIB engine's namespace does the same). A command killed in the instant between a
helper's start and setpriv arming the signal still leaves that helper running."""

from __future__ import annotations

import shutil


def ending_with_us(argv: list[str]) -> list[str]:
    """`argv` prefixed so that it is SIGKILLed when this process (the thread that starts it)
    dies; unchanged where util-linux's setpriv is missing."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *argv] if setpriv else list(argv)
