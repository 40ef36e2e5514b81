"""Shared test setup: each test gets its own AMILAB_HOME; caches are shared across tests so
real builds download packages once per machine (they are keyed by content)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AMILAB = [sys.executable, "-m", "harness.cli"]


def need(tool: str, package: str) -> str:
    """A host tool a test runs. scripts/setup.sh installs it, so a missing one fails the test
    (saying which Debian package to install) rather than skipping it."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: install Debian's {package} (scripts/setup.sh does)")
    return path


@pytest.fixture
def amilab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "amilab-home"
    monkeypatch.setenv("AMILAB_HOME", str(home))
    return home


def run_amilab(
    *args: str, env: dict[str, str] | None = None, timeout: float = 1800, check: bool = False
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*AMILAB, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"amilab {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


MODULE_TOTALS = 15  # how many modules the per-module summary lists

# Integration modules by their seconds in the last full run (the per-module summary below),
# longest first. Test workers (pytest-xdist, --dist loadfile) take whole modules in
# collection order, so starting the longest ones first keeps one worker from being left
# with a long module at the end while the other idles. Modules not listed keep their
# place after these; the order changes no result, only when each module starts.
LONGEST_FIRST = [
    "test_architectures.py",
    "test_instances.py",
    "test_modules.py",
    "test_matrix_fleet.py",
    "test_crash_commands.py",
    "test_matrix.py",
    "test_api.py",
    "test_import.py",
    "test_reproducible.py",
    "test_hvm_build.py",
    "test_concurrency.py",
    "test_crash.py",
    "test_instances_nitro.py",
    "test_smoke.py",
    "test_add_modules.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        integration = "integration" in item.path.parts
        if integration and name in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(name))
        return (1, 0) if integration else (2, 0)

    items.sort(key=rank)  # stable: tests keep their order inside a module


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Seconds per test module (setup, call and teardown of its tests), slowest first: the
    suite has a time limit in CI, and a module's total says where it goes better than the
    slowest single tests do (a module-scoped fixture's boot is charged to one test)."""
    totals: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            duration = getattr(report, "duration", None)
            if not nodeid or duration is None or not hasattr(report, "when"):
                continue
            module = nodeid.split("::", 1)[0]
            totals[module] = totals.get(module, 0.0) + duration
    if not totals:
        return
    terminalreporter.write_sep("=", f"slowest {MODULE_TOTALS} modules (seconds)")
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    for module, seconds in ranked[:MODULE_TOTALS]:
        terminalreporter.write_line(f"{seconds:9.1f}  {module}")
    terminalreporter.write_line(f"{sum(totals.values()):9.1f}  all {len(totals)} modules")
