"""Precision as a segmenter setting: native-bf16 detection, what ``auto`` picks, bf16 against fp32 on real data,
and the precision reported in predictions, batch summaries and output metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_data
from model_factory import calibrated_model, save_test_model, texture
from napari_alnet import load_model
from napari_alnet.engine import devices
from napari_alnet.engine.batch import segment_files_job
from napari_alnet.engine.devices import BF16Support, choose_precision, cpuinfo_flags, detect_bf16, onednn_isa_cap
from napari_alnet.engine.progress import run_job
from napari_alnet.engine.segmenter import Segmenter
from napari_alnet.io.pretrained import shipped_models
from napari_alnet.io.stack_writer import recorded_info
from napari_alnet.model.metadata import ModelMetadata

CPU = torch.device("cpu")
VALIDATED = {"bf16": {"validated": True, "max_metric_change": 0.0005}}
X86 = {"architecture": "x86_64"}


def _native(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(devices, "cpu_bf16_support",
                        lambda: BF16Support(native, "mocked: native bf16" if native else "mocked: no bf16"))


# --- detection -------------------------------------------------------------------------------------------------------

def test_native_bf16_needs_the_flags_onednn_and_no_isa_cap_below_bf16():
    assert detect_bf16({"avx2", "fma"}, X86, None, True).native is False
    assert detect_bf16({"avx512f", "avx512_bf16"}, X86, None, True).native is True
    assert detect_bf16({"amx_tile", "amx_bf16", "avx512_bf16"}, X86, "AVX512_CORE_AMX", True).native is True
    capped = detect_bf16({"avx512_bf16", "amx_bf16"}, X86, "AVX512_CORE", True)
    assert capped.native is False and "ONEDNN_MAX_CPU_ISA=AVX512_CORE" in capped.reason
    assert detect_bf16({"avx512_bf16"}, X86, "AVX2", True).native is False
    assert detect_bf16({"avx512_bf16"}, X86, "AVX512_CORE_BF16", True).native is True
    assert detect_bf16({"avx512_bf16"}, X86, None, False).native is False  # torch's oneDNN without bf16
    # no /proc/cpuinfo (macOS, Windows): torch's own capability probe decides
    assert detect_bf16(None, X86 | {"amx_bf16": True}, None, True).native is True
    assert detect_bf16(None, X86 | {"avx512_bf16": False}, None, True).native is False
    arm = detect_bf16({"bf16", "asimd"}, {"architecture": "arm64"}, None, True)
    assert arm.native is False and "arm64" in arm.reason


def test_cpuinfo_flags_and_the_isa_cap_are_read(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpuinfo_flags(info) == {"fpu", "avx2", "avx512_bf16", "amx_bf16"}
    assert cpuinfo_flags(tmp_path / "absent") is None
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "avx2"}) == "AVX2"
    assert onednn_isa_cap({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX512_CORE"
    assert onednn_isa_cap({}) is None
    assert isinstance(devices.cpu_bf16_support().native, bool)  # this machine, whatever it has


# --- what auto picks -----------------------------------------------------------------------------------------------

def test_auto_is_fp32_where_bf16_is_not_native_even_for_a_validated_model(monkeypatch):
    _native(monkeypatch, False)
    choice = choose_precision("auto", CPU, VALIDATED)
    assert choice.precision == "fp32" and "mocked: no bf16" in choice.reason
    model = calibrated_model(card=VALIDATED)
    assert model.precision == "fp32" and model.requested == "auto"


def test_auto_is_bf16_only_where_native_and_validated(monkeypatch):
    _native(monkeypatch, True)
    assert choose_precision("auto", CPU, VALIDATED).precision == "bf16"
    assert choose_precision("auto", CPU, {}).precision == "fp32"
    assert choose_precision("auto", CPU, {"bf16": {"validated": False}}).precision == "fp32"
    assert "does not record bf16 as validated" in choose_precision("auto", CPU, {}).reason
    skipped = choose_precision("auto", CPU, {"bf16": {"validated": False, "skipped": "the check failed: boom"}})
    assert skipped.precision == "fp32" and "bf16 check was skipped (the check failed: boom)" in skipped.reason
    failed = choose_precision("auto", CPU, {"bf16": {"validated": False, "max_metric_change": 0.01,
                                                     "label_agreement": 0.99}})
    assert "failed the model card's accuracy guard (largest metric change 0.01, label agreement 0.99)" in failed.reason
    assert choose_precision(None, CPU, VALIDATED).precision == "bf16"
    assert choose_precision("auto", torch.device("meta"), VALIDATED).precision == "fp32"
    assert calibrated_model(card=VALIDATED).precision == "bf16"
    assert calibrated_model().precision == "fp32"  # no validation in its card


def test_explicit_precisions_and_refusals(monkeypatch):
    _native(monkeypatch, False)
    assert choose_precision("bf16", CPU, {}).precision == "bf16"  # asked for: emulated, slower, but runs
    assert choose_precision("FP32", CPU, VALIDATED).precision == "fp32"
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        choose_precision("fp16", CPU, {})
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int4", CPU, {})
    with pytest.raises(ValueError, match="int8 cannot run for this model"):
        choose_precision("int8", CPU, {})
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        calibrated_model().with_precision("fp16")
    with pytest.raises(ValueError, match="bf16 runs on cpu or cuda"):
        choose_precision("bf16", torch.device("meta"), {})


def test_a_precision_change_leaves_the_original_untouched(monkeypatch):
    _native(monkeypatch, False)
    model = calibrated_model()
    img = texture((64, 64), 3)
    before = model.predict(img)
    bf16 = model.with_precision("bf16")
    assert bf16 is not model and bf16.precision == "bf16" and bf16.requested == "bf16"
    assert model.precision == "fp32" and model.requested == "auto"
    assert all(p.dtype == torch.float32 for p in model.network.parameters())  # autocast: weights stay fp32
    assert bf16.network is model.network  # shared, never modified
    np.testing.assert_array_equal(model.predict(img), before)
    assert model.with_precision("auto") is model and model.to("cpu") is model
    assert bf16.with_precision("bf16") is bf16
    explicit = model.with_precision("fp32")
    assert explicit is not model and explicit.requested == "fp32" and explicit.precision == "fp32"
    result = run_job(bf16.predict_job(img))
    assert result.precision == "bf16" and result.device == "cpu"
    assert run_job(model.predict_job(img)).precision == "fp32"
    assert np.abs(result.probabilities - before).max() < 0.15  # bf16 rounding on an untrained network


def test_auto_is_decided_again_on_another_device_and_explicit_ones_are_kept(monkeypatch):
    _native(monkeypatch, True)
    monkeypatch.setattr(devices, "available_devices", lambda: ["meta", "cpu"])
    model = calibrated_model(card=VALIDATED)
    assert model.precision == "bf16"
    elsewhere = model.to("meta")
    assert elsewhere.precision == "fp32" and elsewhere.requested == "auto"
    assert model.to("cpu") is model  # (a meta network holds no data to bring back)
    with pytest.raises(ValueError, match="bf16 runs on cpu or cuda"):
        model.with_precision("bf16").to("meta")
    assert model.precision == "bf16" and model.device == CPU


def test_load_model_takes_a_precision(tmp_path, monkeypatch):
    _native(monkeypatch, False)
    path = save_test_model(tmp_path / "m.safetensors", card=VALIDATED)
    assert load_model(path).precision == "fp32"
    assert load_model(path, precision="bf16").precision == "bf16"
    assert Segmenter.load(path, "cpu", "fp32").requested == "fp32"
    assert "precision='bf16'" in repr(load_model(path, precision="bf16"))


# --- outputs -------------------------------------------------------------------------------------------------------

def _stack(path: Path) -> Path:
    import tifffile

    data = (texture((3, 48, 56), 0, 2.0) * 3000).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    return path


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_precision_is_recorded_in_the_outputs_and_the_summary(tmp_path, precision):
    model = calibrated_model(modality="em", threshold=0.45).with_precision(precision)
    src = _stack(tmp_path / "s.tif")
    summary = run_job(segment_files_job([src], tmp_path / "out", model, probabilities=True, instances=True))
    assert summary.ok and summary.precision == precision and summary.device == "cpu"
    labels = recorded_info(tmp_path / "out" / "s_labels.tif")  # uint8 mask
    ids = recorded_info(tmp_path / "out" / "s_instances.tif")  # int32 instances beside it: tifffile's JSON description
    prob = recorded_info(tmp_path / "out" / "s_prob.tif")  # float32: ImageJ's Info property
    for info in (labels, ids, prob):
        assert info["precision"] == precision and info["device"] == "cpu" and info["threshold"] == 0.45
        assert info["model"] == "network" and info["software"].startswith("napari-alnet")
    assert labels["output"] == "labels" and ids["output"] == "instances" and prob["output"] == "probabilities"
    run_job(segment_files_job([src], tmp_path / "sem", model))
    assert recorded_info(tmp_path / "sem" / "s_labels.tif")["output"] == "labels"


# --- real data -----------------------------------------------------------------------------------------------------

def test_bf16_labels_agree_with_fp32_on_a_real_isbi_slice():
    from skimage.io import imread

    if "em" not in shipped_models():
        pytest.skip("the em model is not shipped in this installation")
    image = imread(require_data("isbi2012") / "train" / "images" / "21.png")
    fp32 = load_model("em", device="cpu", precision="fp32")
    bf16 = fp32.with_precision("bf16")
    a, b = fp32.predict(image), bf16.predict(image)
    agreement = ((a > fp32.threshold) == (b > fp32.threshold)).mean()
    assert agreement >= 0.995, agreement
    assert np.abs(a - b).max() < 0.2


def test_the_shipped_cards_record_the_bf16_guard():
    for name in shipped_models():
        card = load_model(name, device="cpu", precision="fp32").metadata.card
        entry = card.get("bf16")
        assert entry is not None, f"{name}: no bf16 entry in the model card (benchmarks/model_cards.py)"
        assert entry["validated"] == (entry["max_metric_change"] <= entry["limit"] == 0.002), name
        assert devices.bf16_validated(card) is entry["validated"]


def test_unknown_card_entries_never_validate():
    assert not devices.bf16_validated({})
    assert not devices.bf16_validated({"bf16": "yes"})
    assert not devices.bf16_validated({"bf16": {"validated": "true"}})
    assert ModelMetadata().card == {} and choose_precision("auto", CPU, ModelMetadata().card).precision == "fp32"
