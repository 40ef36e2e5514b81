#!/usr/bin/env bash
# The whole test suite: ruff, unit tests, then integration tests (real builds and boots).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
.venv/bin/ruff check builder harness tests bench
exec .venv/bin/python -m pytest -v -rfEs --durations=25 "$@"
