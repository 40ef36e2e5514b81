#!/usr/bin/env bash
# The main job: build the default recipes in build.yaml and register them.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
exec .venv/bin/amilab build build.yaml "$@"
