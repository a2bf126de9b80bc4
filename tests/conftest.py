from __future__ import annotations

import os
from pathlib import Path

# Before torch loads libgomp: the suite's own threads (Qt, Xvfb, child processes) share 2 cores with torch's, where
# sleeping OpenMP threads keep every test's time bounded (spinning ones were measured to stall 100-fold under load).
# The wait policy changes speed, never results; tests/test_threads.py checks each entry point's own choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

from napari_alnet.engine import quantized
from napari_alnet.engine.registry import session_registry

DATA = Path(os.environ.get("NAPARI_ALNET_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def require_data(name: str) -> Path:
    """The dataset folder ``../shared/data/<name>``, or skip saying why."""
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real-data check: {path} is absent (the shared datasets live in ../shared/data)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(autouse=True)
def _no_background_speed_checks(monkeypatch):
    """A model loaded with ``auto`` whose int8 speed is not measured here yet starts a detached measurement; the
    suite starts none (tests/test_int8.py runs one in-process)."""
    monkeypatch.setattr(quantized, "start_background", lambda command: None)


@pytest.fixture
def forget_registered_models():
    """Models a test registers in the session's registry (fine-tunes, loaded files) are unregistered after it."""
    registry = session_registry()
    before = {e.name for e in registry.entries()}
    yield
    for entry in registry.entries():
        if entry.name not in before:
            registry.unregister(entry.name)
