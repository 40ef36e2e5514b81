"""Helpers for integration tests that run real builds through the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import run_amilab


def build(recipe: Path, home: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    result = run_amilab(
        "build", str(recipe), "--json", *extra, env={"AMILAB_HOME": str(home), **(env or {})}
    )
    assert result.returncode == 0, f"build failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def images(home: Path, image_type: str | None = None) -> list[dict]:
    args = ["images", "--json"] + (["--type", image_type] if image_type else [])
    result = run_amilab(*args, env={"AMILAB_HOME": str(home)}, check=True)
    return json.loads(result.stdout)["Images"]


def debugfs(disk: str, request: str, offset: int = 0) -> str:
    """Read a disk without mounting it (offset for a partition's filesystem)."""
    target = f"{disk}?offset={offset}" if offset else disk
    result = subprocess.run(
        ["debugfs", "-R", request, target], capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr


def exists(disk: str, path: str, offset: int = 0) -> bool:
    out = debugfs(disk, f"stat {path}", offset)
    return "Inode:" in out and "File not found" not in out
