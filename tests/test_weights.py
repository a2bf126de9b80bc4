from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_alnet import Segmenter, load_model, predict
from napari_alnet.engine.normalization import Normalization
from napari_alnet.io.weights import ModelMetadata, WeightsError, load_weights, save_weights
from napari_alnet.model import ALNet, ALNetConfig


def _meta(**kw) -> ModelMetadata:
    return ModelMetadata(config=ALNetConfig(), modality="em", normalization=Normalization(), threshold=0.4,
                         card={"summary": "test model", "metrics": {"iou": 0.5}}, **kw)


def test_weights_round_trip_bit_exact(tmp_path):
    model = ALNet()
    for p in model.parameters():
        p.data.normal_()
    path = save_weights(model, _meta(), tmp_path / "m.safetensors")
    loaded, meta = load_weights(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert meta.threshold == 0.4 and meta.card["metrics"]["iou"] == 0.5 and meta.modality == "em"
    assert meta.config == model.config
    assert not list(tmp_path.glob("*.part"))


def test_fused_weights_round_trip(tmp_path):
    model = ALNet().reparameterize()
    path = save_weights(model, _meta(), tmp_path / "fused.safetensors")
    again = load_model(path)
    x = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    assert np.array_equal(predict(Segmenter.from_network(model, again.metadata), x), predict(again, x))


def test_load_model_is_fused_eval_with_metadata(tmp_path):
    path = save_weights(ALNet(), _meta(), tmp_path / "m.safetensors")
    model = load_model(str(path), device="cpu")
    assert model.network.is_reparameterized and not model.network.training
    assert model.source == str(path) and model.device.type == "cpu"
    assert model.metadata.summary == "test model"
    prob = predict(model, np.zeros((37, 41), np.uint16))
    assert prob.shape == (37, 41) and prob.dtype == np.float32


def test_pickle_file_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(ALNet().state_dict(), path)
    with pytest.raises(WeightsError, match="pickle"):
        load_weights(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightsError, match="pickle"):
        load_model(raw)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = save_weights(ALNet(), _meta(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_weights(trunc)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(WeightsError, match="not an napari-alnet weight file"):
        load_weights(foreign)
    with pytest.raises(WeightsError, match="neither a built-in model"):
        load_model(tmp_path / "missing.safetensors")


def test_mismatched_tensors_are_refused(tmp_path):
    path = save_weights(ALNet(ALNetConfig(decoder_width=16)), _meta(), tmp_path / "m.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    meta["config"] = ALNetConfig().to_json()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(WeightsError, match="do not match"):
        load_weights(path)


def test_working_resolution_round_trips_and_is_validated(tmp_path):
    path = save_weights(ALNet(), _meta(input_scale=2.0), tmp_path / "zoom.safetensors")
    meta = load_weights(path)[1]
    assert meta.input_scale == 2.0 and meta.input_size is None
    assert meta.network_shape((40, 51)) == (80, 102)
    assert _meta(input_size=(64, 64), input_scale=2.0).network_shape((40, 51)) == (64, 64)
    with pytest.raises(ValueError, match="input_scale"):
        _meta(input_scale=0.0)


def test_header_length_that_looks_like_a_pickle_marker_still_loads(tmp_path):
    """A safetensors header length whose low byte is 0x80 (1 file in 256) is not mistaken for a pickle."""
    model = ALNet()
    for pad in range(300):
        path = save_weights(model, ModelMetadata(card={"summary": "x" * pad}), tmp_path / "m.safetensors")
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert load_weights(path)[1].card["summary"] == "x" * pad
