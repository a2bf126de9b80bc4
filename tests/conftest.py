from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
