#!/usr/bin/env bash
# Creates .venv and installs napari-alnet with everything its tests need. Idempotent: a second run checks the
# environment and installs nothing. Says each step on stderr; SETUP_VERBOSE=1 (scripts/demo.sh) shows pip's own
# progress (what it downloads and installs) instead of running it quietly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_OUTPUT=(-q)
if [ "${SETUP_VERBOSE:-0}" = 1 ]; then
  PIP_OUTPUT=(--progress-bar on)
fi
step() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  step "creating the Python environment .venv ($("$PY" --version 2>&1))"
  "$PY" -m venv .venv
fi
if .venv/bin/python -c "import napari_alnet, pytest, pytestqt, napari, bioimageio.core, onnx, onnxruntime" 2>/dev/null; then
  step "the environment .venv is complete: nothing to install"
else
  step "1/3 upgrading pip"
  .venv/bin/python -m pip install "${PIP_OUTPUT[@]}" --upgrade pip
  # The CPU build of torch 2.13.0 (a plain `torch` would pull a multi-GB CUDA build here).
  step "2/3 installing torch 2.13.0 (the CPU build: the largest download, the longest step)"
  .venv/bin/python -m pip install "${PIP_OUTPUT[@]}" "torch==2.13.0"
  step "3/3 installing napari-alnet with napari, the test tools and the export libraries"
  .venv/bin/python -m pip install "${PIP_OUTPUT[@]}" -e ".[testing,export]"
  step "done: $(pwd)/.venv"
fi
