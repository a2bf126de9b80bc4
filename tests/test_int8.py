"""The int8 precision: a quantized graph of a tiny model agrees with fp32 (whole and tiled), ``auto`` picks int8 only
where the card validates it and it measures fastest, a graph that does not match its card is not used, and
without onnxruntime everything falls back to fp32 (simulated)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_factory import texture
from napari_alnet import load_model
from napari_alnet.engine import devices, quantized, speed_check
from napari_alnet.engine.devices import BF16Support, Fastest, choose_precision
from napari_alnet.engine.normalization import model_input
from napari_alnet.engine.segmenter import Segmenter
from napari_alnet.io.pretrained import builtin_path, shipped_models
from napari_alnet.io.weights import save_weights
from napari_alnet.model import ALNet, ALNetConfig
from napari_alnet.model.metadata import ModelMetadata

pytest.importorskip("onnxruntime")
CPU = torch.device("cpu")
TINY = ALNetConfig(stage_depths=(1, 1, 2, 2, 1), stage_widths=(8, 16, 16, 24, 32), context_width=16,
                   decoder_width=8)
#: int8 against fp32 on the tiny model (untrained, calibrated to logits of unit scale, so many pixels lie near 0.5):
#: mean |Δp| (measured 0.032), and the share of pixels where fp32 is confident (|p - 0.5| > 0.2) whose label differs
#: (measured < 0.5 %). Tiled int8 against whole-image int8: the same pooled context, so float rounding only.
MEAN_DP, CONFIDENT_DISAGREE, TILED = 0.06, 0.02, 1e-3


def _tiny_network() -> ALNet:
    """A fused tiny AL-Net whose BatchNorm statistics come from textures and whose logits have unit scale."""
    torch.manual_seed(0)
    net = ALNet(TINY)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    meta = ModelMetadata(config=TINY)
    x = torch.from_numpy(np.stack([model_input(texture((128, 128), s), meta) for s in range(3)]))
    with torch.no_grad():
        net.train()(x)
        net.reparameterize()
        logits = net(x)
        head = net.decoder.classify
        head.weight.div_(float(logits.std()))
        head.bias.sub_(float(logits.mean())).div_(float(logits.std()))
    return net.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, ALNet]:
    """A weight file of the tiny model with its quantized graph beside it, validated in its card."""
    folder = tmp_path_factory.mktemp("int8")
    net = _tiny_network()
    meta = ModelMetadata(config=TINY)
    graph = quantized.quantize(net, meta, [texture((96, 128), s) for s in range(10, 13)],
                               quantized.graph_path(folder / "tiny.safetensors"))
    meta.card = {"int8": {"validated": True, "onnx_sha256": quantized.sha256_file(graph)}}
    return save_weights(net, meta, folder / "tiny.safetensors"), net


def _close(fp32: np.ndarray, int8: np.ndarray) -> bool:
    confident = np.abs(fp32 - 0.5) > 0.2
    disagree = float(((fp32 > 0.5) != (int8 > 0.5))[confident].mean())
    print(f"mean |dp| {np.abs(fp32 - int8).mean():.4f}, confident pixels' labels differing {disagree:.4f}")
    return bool(np.abs(fp32 - int8).mean() < MEAN_DP and disagree < CONFIDENT_DISAGREE)


def test_int8_predict_agrees_with_fp32_whole_and_tiled(tiny):
    path, _ = tiny
    int8 = load_model(path, device="cpu", precision="int8")
    fp32 = int8.with_precision("fp32")
    assert int8.precision == "int8" and int8.int8_graph == quantized.graph_path(path)
    image = texture((96, 130), 3)
    a, b = fp32.predict(image), int8.predict(image)
    assert a.shape == b.shape == image.shape and b.dtype == np.float32
    assert _close(a, b)
    big = texture((160, 576), 4)  # tiles of 544: the pooled context from pass 1 runs through the graph too
    whole, tiled = int8.predict(big), int8.predict(big, tile=544)
    assert np.abs(tiled - whole).max() < TILED and _close(fp32.predict(big), tiled)
    assert _close(fp32.predict(image, tta=True), int8.predict(image, tta=True))


def test_auto_picks_int8_only_where_validated_and_measured_fastest(monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: BF16Support(False, "mocked: no bf16"))
    validated = {"int8": {"validated": True}}
    int8_wins = lambda c: Fastest("int8", {p: 10.0 if p == "int8" else 30.0 for p in c})  # noqa: E731
    assert choose_precision("auto", CPU, validated, int8_unavailable=None, fastest=int8_wins).precision == "int8"
    for card in ({}, {"int8": {"validated": False}}, {"int8": "yes"}, {"bf16": {"validated": True}}):
        assert choose_precision("auto", CPU, card, int8_unavailable=None, fastest=int8_wins).precision == "fp32"
    fp32_wins = lambda c: Fastest("fp32", {p: 10.0 if p == "fp32" else 30.0 for p in c})  # noqa: E731
    assert choose_precision("auto", CPU, validated, int8_unavailable=None, fastest=fp32_wins).precision == "fp32"
    assert choose_precision("auto", CPU, validated, int8_unavailable=None).precision == "fp32"  # never unmeasured
    not_yet = choose_precision("auto", CPU, validated, int8_unavailable=None, fastest=lambda c: None)
    assert not_yet.precision == "fp32" and "not measured yet" in not_yet.reason
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: BF16Support(True, "mocked: native bf16"))
    both = {"int8": {"validated": True}, "bf16": {"validated": True}}
    not_yet = choose_precision("auto", CPU, both, int8_unavailable=None, fastest=lambda c: None)
    assert not_yet.precision == "bf16" and "not measured yet" in not_yet.reason
    assert choose_precision("auto", CPU, both, int8_unavailable=None, fastest=int8_wins).precision == "int8"
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: BF16Support(False, "mocked: no bf16"))
    assert choose_precision("auto", CPU, validated).precision == "fp32"  # no graph
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        choose_precision("int8", torch.device("meta"), validated, int8_unavailable=None)
    with pytest.raises(ValueError, match="int8 cannot run for this model: no quantized"):
        choose_precision("int8", CPU, validated)


def test_auto_measures_int8_in_the_background_and_later_loads_choose_by_the_figures(tiny, monkeypatch, tmp_path):
    """No load waits for the speed check: the first runs without int8 and starts one background measurement; once
    its figures are kept, auto picks by them (and nothing is timed again)."""
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: BF16Support(False, "mocked: no bf16"))
    monkeypatch.setenv("NAPARI_ALNET_CACHE", str(tmp_path))
    quantized.clear_sessions()
    started: list[list[str]] = []
    monkeypatch.setattr(quantized, "start_background", started.append)
    monkeypatch.setattr(quantized, "_measured", lambda *a: pytest.fail("a load timed the candidates itself"))
    path, _ = tiny
    first = load_model(path, device="cpu")
    assert first.precision == "fp32" and "not measured yet" in first.precision_choice.reason
    assert load_model(path, device="cpu").precision == "fp32" and len(started) == 1  # one measurement per process
    command = started[0]
    assert command[1:3] == ["-m", speed_check.__name__] and command[3] == str(path)
    assert not quantized.speed_cache().exists()
    monkeypatch.undo()  # the background process: real timing, the same cache
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: BF16Support(False, "mocked: no bf16"))
    monkeypatch.setenv("NAPARI_ALNET_CACHE", str(tmp_path))
    assert speed_check.main(command[3:]) == 0 and quantized.speed_cache().is_file()
    quantized.clear_sessions()  # a new process: the figures come from the cache, nothing is timed
    monkeypatch.setattr(quantized, "_measured", lambda *a: pytest.fail("measured again despite the cache"))
    monkeypatch.setattr(quantized, "start_background", lambda c: pytest.fail("measured again despite the cache"))
    model = load_model(path, device="cpu")
    assert model.precision in ("fp32", "int8") and "measured on this CPU" in model.precision_choice.reason
    unvalidated = Segmenter.from_network(_tiny_network(), ModelMetadata(config=TINY), device="cpu",
                                         int8_graph=quantized.graph_path(path))
    assert unvalidated.precision == "fp32" and unvalidated.with_precision("int8").precision == "int8"


def test_a_graph_without_its_weight_file_is_timed_where_it_is_needed(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: BF16Support(False, "mocked: no bf16"))
    monkeypatch.setenv("NAPARI_ALNET_CACHE", str(tmp_path))
    quantized.clear_sessions()
    monkeypatch.setattr(quantized, "start_background", lambda c: pytest.fail("nothing to measure in the background"))
    path, net = tiny
    graph = tmp_path / "alone.int8.onnx"
    graph.write_bytes(quantized.graph_path(path).read_bytes())
    card = {"int8": {"validated": True, "onnx_sha256": quantized.sha256_file(graph)}}
    model = Segmenter.from_network(net, ModelMetadata(config=TINY, card=card), device="cpu", int8_graph=graph)
    assert "measured on this CPU" in model.precision_choice.reason and quantized.speed_cache().is_file()


def test_a_graph_that_does_not_match_its_card_is_not_used(tiny, tmp_path):
    path, net = tiny
    meta = ModelMetadata(config=TINY, card={"int8": {"validated": True, "onnx_sha256": "0" * 64}})
    other = save_weights(net, meta, tmp_path / "other.safetensors")
    quantized.graph_path(other).write_bytes(quantized.graph_path(path).read_bytes())
    model = load_model(other, device="cpu")
    assert model.int8_graph is None and model.precision == "fp32"
    with pytest.raises(ValueError, match="no quantized int8 graph"):
        model.with_precision("int8")


def test_without_onnxruntime_int8_falls_back_to_fp32(tiny, monkeypatch):
    path, _ = tiny
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails, as when not installed
    assert not quantized.onnxruntime_available()
    model = load_model(path, device="cpu")
    assert model.precision == "fp32" and model.int8_graph is None
    assert "int8 validated but not usable here" in model.precision_choice.reason
    with pytest.raises(ValueError, match="onnxruntime is not installed"):
        model.with_precision("int8")
    image = texture((64, 64), 1)
    np.testing.assert_array_equal(model.predict(image), model.with_precision("fp32").predict(image))


def test_the_shipped_cards_record_the_int8_guard():
    for name in shipped_models():
        card = load_model(name, device="cpu", precision="fp32").metadata.card
        entry = card.get("int8")
        assert entry is not None, f"{name}: no int8 entry in the model card (benchmarks/model_cards.py --int8-json)"
        passed = entry["max_metric_change"] <= entry["limit"] == 0.002 and entry["label_agreement"] >= 0.995
        assert entry["validated"] == passed, name
        assert devices.int8_validated(card) is entry["validated"]
        graph = quantized.graph_path(builtin_path(name))
        if entry["validated"]:  # only a validated graph ships: it must be the one measured
            assert quantized.sha256_file(graph) == entry["onnx_sha256"], f"{name}: {graph.name} is not the one measured"
            assert quantized.graph_for(builtin_path(name), card) == graph
        else:
            assert quantized.graph_for(builtin_path(name), card) is None
            assert load_model(name, device="cpu").precision != "int8"
