"""The shipped weight files load offline and carry their model cards (fast; no data needed)."""

from __future__ import annotations

import pytest

from napari_alnet import load_model
from napari_alnet.io.pretrained import BUILTIN_NAMES, builtin_path, shipped_models
from napari_alnet.io.weights import WeightsError


def test_em_model_ships_with_its_card():
    assert "em" in shipped_models()
    model = load_model("em", device="cpu")
    meta = model.metadata
    assert model.network.is_reparameterized and not model.network.training and model.device.type == "cpu"
    assert meta.modality == "em" and meta.objects == "background" and meta.in_channels == 1
    training = meta.card["training"]
    assert training["wall_seconds"] > 0 and "val_metrics" in training and training["train_pairs"]
    assert all(not name.startswith(("21", "22", "23", "24", "25", "26", "27", "28", "29"))
               for name in training["train_pairs"] + training["val_pairs"])  # never trained on the test slices


def test_dermoscopy_model_ships_rgb_at_a_fixed_input_size():
    assert "dermoscopy" in shipped_models()
    meta = load_model("dermoscopy", device="cpu").metadata
    assert meta.in_channels == 3 and meta.input_size == (192, 192) and meta.modality == "dermoscopy"
    assert not set(meta.card["training"]["train_pairs"]) & set(meta.card["training"]["val_pairs"])


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_names_load_or_say_they_are_not_shipped(name):
    if builtin_path(name).is_file():
        assert load_model(name, device="cpu").metadata.summary
    else:
        with pytest.raises(WeightsError, match="not shipped"):
            load_model(name)
