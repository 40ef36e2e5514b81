#!/usr/bin/env bash
# The whole test suite: ruff, unit tests, then integration tests (real builds and boots).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
.venv/bin/ruff check builder harness tests bench
# Test modules run on parallel workers, whole modules each (module-scoped builds and guests
# stay in one process): a TCG guest keeps one core busy, so one worker per core.
workers=${AMILAB_TEST_WORKERS:-$(nproc)}
exec .venv/bin/python -m pytest -v -rfEs --durations=25 -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
