"""The systemd-analyze sections the smoke records, parsed from what the guest printed."""

from __future__ import annotations

from harness.smoke.analysis import SCRIPT, SECTIONS, parse

OUTPUT = """@@Time
Startup finished in 1.929s (kernel) + 5.361s (userspace) = 7.291s
graphical.target reached after 5.355s in userspace.
@@CriticalChain
The time when unit became active or started is printed after the "@" character.
The time the unit took to start is printed after the "+" character.

ssh.service +191ms
└─ec2-fetch-ssh-key.service @4.603s +637ms
@@Blame
2.015s ssh-host-keys.service
1.597s systemd-journald.service
"""


def test_each_section_is_kept_without_the_legend() -> None:
    got = parse(OUTPUT)
    assert set(got) == set(SECTIONS)
    assert got["Time"].startswith("Startup finished in 1.929s")
    assert got["CriticalChain"].splitlines()[0] == "ssh.service +191ms"
    assert "printed after" not in got["CriticalChain"]
    assert got["Blame"].splitlines() == [
        "2.015s ssh-host-keys.service",
        "1.597s systemd-journald.service",
    ]


def test_a_guest_without_systemd_gives_nothing() -> None:
    assert parse("") == {}
    assert SCRIPT.startswith("command -v systemd-analyze")
    # a marker-like line that names no section is text of the current one, not a section
    assert parse("@@Time\n@@Nope\nx\n") == {"Time": "@@Nope\nx"}


def test_levels_choose_what_the_guest_runs() -> None:
    from harness.smoke.analysis import LEVELS, script

    assert script("none") is None
    chain, full = script("chain"), script("full")
    assert chain is not None and full is not None
    assert "critical-chain ssh.service" in chain and "blame" not in chain
    assert full.startswith(chain) and "systemd-analyze blame" in full
    assert set(LEVELS) == {"none", "chain", "full"}
