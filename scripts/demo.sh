#!/usr/bin/env bash
# The main job on an embedded default: installs napari-alnet into .venv, then runs `alnet demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/alnet demo "$@"
