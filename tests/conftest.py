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
