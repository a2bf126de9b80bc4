"""The precision guard (training.precision_check): its verdict, the slices a fine-tune measures it on, and a fine-tuned
model whose bf16 fails it staying in fp32 under ``auto``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_alnet import load_model
from napari_alnet.engine import devices
from napari_alnet.io.pretrained import builtin_path
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import load_weights, save_weights
from napari_alnet.training import precision_check
from napari_alnet.training.finetune import record_run
from napari_alnet.training.loop import TrainResult
from napari_alnet.training.precision_check import annotated_guard, summarize


@pytest.fixture()
def native(monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: devices.BF16Support(True, "native bf16: test"))


def per_image(fp32: dict[str, float], other: dict[str, float]) -> dict:
    return {"whole": {"fp32": [fp32], "bf16": [other]}}


@pytest.mark.parametrize("change,agreement,validated", [
    (0.002, 0.995, True),  # both limits are inclusive
    (0.0021, 0.999, False),  # a metric moved too far
    (0.0, 0.9949, False),  # too many labels differ
])
def test_verdict_needs_both_the_metric_limit_and_the_agreement(change, agreement, validated):
    result = summarize("s", per_image({"fg iou": 0.5, "fg dice": 0.7}, {"fg iou": 0.5 + change, "fg dice": 0.7}),
                       "bf16", agreement, 0.1, {"fp32": 1.0, "bf16": 0.5}, images=1)
    assert result["validated"] is validated and result["max_metric_change"] == pytest.approx(change)
    assert result["metrics"]["whole fg iou"]["change"] == pytest.approx(change)


def test_no_metric_to_compare_is_never_validated():
    result = summarize("agreement only", {}, "bf16", 1.0, 0.0, {"fp32": 0.1, "bf16": 0.1}, images=1)
    assert result["validated"] is False and result["max_metric_change"] is None


def test_guard_slices_by_role_as_the_user_numbers_them():
    stack = np.zeros((4, 8, 8), np.float32)
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1, :4] = 1
    labels[1, 4:6] = 2
    labels[2] = labels[3] = 1
    held = annotated_guard(stack, labels, mode="scribbles", trained=[2, 3], held_out=1, numbers=[10, 11, 12, 13])
    assert held.slices == {"held_out": [11]} and not held.on_training_slices and len(held.images) == 1
    (image,) = held.images
    assert np.array_equal(image.truth, labels[1] == 1) and np.array_equal(image.regions["painted"], labels[1] > 0)
    free = annotated_guard(stack, labels, mode="dense", trained=[1, 2, 3], held_out=None, prefer=2,
                           numbers=[10, 11, 12, 13])
    assert free.on_training_slices and free.slices == {"trained": [11, 12], "unannotated": [10]}
    assert [i.truth is None for i in free.images] == [False, False, True]  # the unpainted slice: agreement only


def saved_em(tmp_path):
    network, meta = load_weights(builtin_path("em"))
    meta.card = {"summary": "fine-tuned (test)", "finetune": {}}
    return save_weights(network, meta, tmp_path / "tuned.safetensors")


def em_guard():
    images, truth = em_like_stack(depth=2, size=128, cells=20, seed=5)
    return annotated_guard(images, truth.astype(np.uint8), mode="dense", trained=[0], held_out=1)


RESULT = TrainResult(out=None, best_epoch=1, best_metrics={"iou": 0.9}, steps_done=3, wall_seconds=1.0)


@pytest.mark.parametrize("patch", [{}, {"MIN_AGREEMENT": 1.01}, {"LIMIT": -1.0}])
def test_a_failing_guard_is_recorded_and_auto_keeps_fp32(patch, native, tmp_path, monkeypatch):
    for name, value in patch.items():
        monkeypatch.setattr(precision_check, name, value)
    weights = saved_em(tmp_path)
    record_run(weights, RESULT, em_guard())
    model = load_model(weights)
    entry = model.metadata.card["bf16"]
    assert entry["images"] == 1 and entry["label_agreement"] > 0.99 and entry["metric_changes"]
    assert entry["validated"] is not patch and model.precision == ("fp32" if patch else "bf16")
    assert model.metadata.card["finetune"] == {"iou": 0.9, "steps": 3, "seconds": 1.0}
    if patch:
        assert "bf16 failed the model card's accuracy guard (largest metric change" in model.precision_choice.reason


def test_a_check_that_fails_still_saves_the_model_in_fp32(native, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("oneDNN could not create a primitive")

    monkeypatch.setattr(precision_check, "compare", broken)
    weights = saved_em(tmp_path)
    record_run(weights, RESULT, em_guard())
    model = load_model(weights)
    assert model.metadata.card["bf16"]["validated"] is False and "primitive" in model.metadata.card["bf16"]["skipped"]
    assert model.precision == "fp32" and model.metadata.card["finetune"]["steps"] == 3


def test_alnet_trains_guard_reads_the_files_raw_in_the_order_of_its_pairs(tmp_path):
    import tifffile

    from napari_alnet.model.metadata import Normalization
    from napari_alnet.training.data import load_pairs, raw_pairs

    stack, membranes = em_like_stack(depth=3, size=48, cells=6, seed=2)
    tifffile.imwrite(tmp_path / "im.tif", stack, photometric="minisblack", metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "m.tif", np.where(membranes, 0, 255).astype(np.uint8), photometric="minisblack",
                     metadata={"axes": "ZYX"})
    files = [(tmp_path / "im.tif", tmp_path / "m.tif")]
    raw = raw_pairs(files, invert=True)
    pairs = load_pairs(files, normalization=Normalization(), in_channels=1, invert=True)
    assert [name for name, _, _ in raw] == [p.name for p in pairs] == ["im[0]", "im[1]", "im[2]"]
    np.testing.assert_array_equal(raw[1][1], stack[1])  # as read: not normalized
    np.testing.assert_array_equal(raw[1][2], membranes[1].astype(bool))
    assert all(np.array_equal(r[2], p.mask > 0) for r, p in zip(raw, pairs, strict=True))
    guard = precision_check.files_guard(raw[-1:], split="held out", on_training_slices=False)
    assert guard.slices == {"held_out": ["im[2]"]} and len(guard.images) == 1 and not guard.on_training_slices
    assert precision_check.files_guard(raw, split="t", on_training_slices=True, limit=2).slices == {
        "trained": ["im[0]", "im[1]"]}
