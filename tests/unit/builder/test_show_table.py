"""Tables printed to a pipe or a file hold every value whole: no "…", no value wrapped
(scripts/main.sh's final smoke table in a log must still name the image, instance and
kernel release); on a terminal they still fit its width."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console
from rich.table import Table

from builder.progress import show_table
from harness.smoke.checks import CheckResult
from harness.smoke.report import SmokeReport, print_summary
from tests.conftest import ROOT

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


def _report() -> SmokeReport:
    return SmokeReport(
        image_id="ami-0123456789abcdef0", image_name=NAME, virtualization_type="paravirtual",
        accelerator="tcg", accelerator_reason="", instance_id="i-0fedcba9876543210",
        kernel_id="aki-00112233445566778", kernel_release=RELEASE, seconds_to_ssh=12.9,
        seconds=30.1, checks=[CheckResult("uname -r", True, RELEASE, RELEASE)],
    )  # fmt: skip


def test_the_smoke_summary_in_a_log_names_image_instance_and_release_whole() -> None:
    buf = io.StringIO()
    print_summary([_report()], Console(file=buf))  # as `scripts/main.sh > log` prints it
    text = buf.getvalue()
    assert "…" not in text
    for value in (NAME, "ami-0123456789abcdef0", "i-0fedcba9876543210", RELEASE):
        assert value in text


def test_on_a_terminal_the_table_still_fits_the_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    show_table(_long_table(), console)
    assert max(map(len, _lines(buf.getvalue()))) <= 80


def test_scripts_main_sh_prints_its_final_table_through_show_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/main.sh ends with `amilab smoke build.yaml --image debian-pv`: run that command
    line through the real CLI, the build and the boot stood in for, with stdout not a
    terminal (as `scripts/main.sh > log`): its table is show_table's, and holds the image
    name, instance ID and kernel release whole."""
    from harness.cli import main
    from harness.launch.accel import Accelerator
    from harness.smoke import report as report_module
    from harness.smoke import run

    command = (ROOT / "scripts" / "main.sh").read_text().strip().splitlines()[-1]
    assert command == 'exec .venv/bin/amilab smoke build.yaml --image debian-pv "$@"'
    image = SimpleNamespace(name=NAME, image_id="ami-0123456789abcdef0")
    monkeypatch.setattr(run.accel, "choose", lambda _: Accelerator("tcg", "stand-in"))
    monkeypatch.setattr(run, "resolve_images", lambda req, say: [image])
    monkeypatch.setattr(run, "smoke_instance", lambda *a: _report())
    shown: list[Table] = []

    def recorded(table: Table, console: Console | None = None) -> None:
        shown.append(table)
        show_table(table, console)

    monkeypatch.setattr(report_module, "show_table", recorded)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["smoke", "build.yaml", "--image", "debian-pv"]) == 0
    out = capsys.readouterr().out
    assert [t.title for t in shown] == ["amilab smoke"]
    assert "…" not in out
    for value in (NAME, "ami-0123456789abcdef0", "i-0fedcba9876543210", RELEASE):
        assert value in out
