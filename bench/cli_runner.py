"""The amilab CLI as the benchmarks run it: `python -m harness.cli` from this source tree,
output captured, a failure ending the benchmark with the command's stderr. (No benchmark
here: bench/instances.py and bench/lifecycle.py import it.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def amilab(
    *args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    """`amilab ARGS` with `env`; an exit status not in `ok` ends the run (SystemExit)."""
    cmd = [sys.executable, "-m", "harness.cli", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode not in ok:
        raise SystemExit(f"amilab {' '.join(args)} failed:\n{result.stderr}")
    return result
