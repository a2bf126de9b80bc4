#!/usr/bin/env bash
# The main job on an embedded default: installs napari-alnet into .venv (showing each step and pip's progress),
# then runs `alnet demo` (arguments are passed on, e.g. -o FOLDER) and ends with where its outputs are.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: step 1/2: the Python environment (.venv; the first run downloads and installs for several minutes)" >&2
SETUP_VERBOSE=1 scripts/setup.sh
echo "demo: step 2/2: alnet demo: segmenting a generated EM-like stack with the shipped em model" >&2
.venv/bin/alnet demo "$@"
