#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (venv, Xvfb, GL), lints, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-display-libs.sh
scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
