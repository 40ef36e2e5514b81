#!/usr/bin/env bash
# The main job: build the default recipe (debian-pv in build.yaml), register it, and
# smoke-test it under QEMU. Extra arguments go to `amilab smoke`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
exec .venv/bin/amilab smoke build.yaml --image debian-pv "$@"
