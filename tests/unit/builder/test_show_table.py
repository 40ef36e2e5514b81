"""Tables printed to a pipe or a file hold every value whole: no "…", no value wrapped
(scripts/main.sh's final smoke table in a log must still name the image, instance and
kernel release); on a terminal they still fit its width."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from builder.progress import show_table
from harness.smoke.checks import CheckResult
from harness.smoke.report import SmokeReport, print_summary

NAME = "debian-bookworm-pv-with-a-recipe-name-far-longer-than-any-terminal-column-holds"
RELEASE = "6.12.95+deb13-cloud-amd64-with-a-local-version-suffix-that-goes-on"


def _long_table() -> Table:
    table = Table(title="long")
    for col in ("ImageId", "Name", "Release", "Created"):
        table.add_column(col)
    table.add_row("ami-0123456789abcdef0", NAME, RELEASE, "2026-12-07T10:11:12.000Z")
    return table


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_table_to_a_file_is_as_wide_as_its_values() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=80)
    assert not console.is_terminal
    show_table(_long_table(), console)
    text = buf.getvalue()
    assert "…" not in text
    for value in ("ami-0123456789abcdef0", NAME, RELEASE, "2026-12-07T10:11:12.000Z"):
        assert value in text  # on one line: not wrapped mid-value
    assert max(map(len, _lines(text))) > 80


def test_the_smoke_summary_in_a_log_names_image_instance_and_release_whole() -> None:
    report = SmokeReport(
        image_id="ami-0123456789abcdef0", image_name=NAME, virtualization_type="paravirtual",
        accelerator="tcg", accelerator_reason="", instance_id="i-0fedcba9876543210",
        kernel_id="aki-00112233445566778", kernel_release=RELEASE, seconds_to_ssh=12.9,
        seconds=30.1, checks=[CheckResult("uname -r", True, RELEASE, RELEASE)],
    )  # fmt: skip
    buf = io.StringIO()
    print_summary([report], Console(file=buf))  # as `scripts/main.sh > log` prints it
    text = buf.getvalue()
    assert "…" not in text
    for value in (NAME, "ami-0123456789abcdef0", "i-0fedcba9876543210", RELEASE):
        assert value in text


def test_on_a_terminal_the_table_still_fits_the_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    show_table(_long_table(), console)
    assert max(map(len, _lines(buf.getvalue()))) <= 80
