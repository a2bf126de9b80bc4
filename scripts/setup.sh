#!/usr/bin/env bash
# Creates .venv and installs napari-alnet with everything its tests need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import napari_alnet, pytest, pytestqt, napari, bioimageio.core, onnx, onnxruntime" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU build of torch 2.13.0 (a plain `torch` would pull a multi-GB CUDA build here).
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[testing,export]"
fi
