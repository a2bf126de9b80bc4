from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_alnet import load_model, predict
from napari_alnet.engine.normalization import Normalization
from napari_alnet.engine.progress import run_job
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import ModelMetadata, load_weights, save_weights
from napari_alnet.model import ALNet
from napari_alnet.training.finetune import (
    AnnotationError,
    FinetuneRequest,
    annotation_pairs,
    check_annotations,
    finetune_job,
    finetune_recipe,
)
from napari_alnet.training.metrics import segmentation_scores


@pytest.fixture(scope="module")
def stack():
    return em_like_stack(depth=6, size=128, cells=20, seed=5)


@pytest.fixture()
def base(tmp_path):
    return save_weights(ALNet(), ModelMetadata(), tmp_path / "base.safetensors")


def scribbles_from(truth: np.ndarray, rng: np.random.Generator, fraction: float = 0.15) -> np.ndarray:
    """Sparse labels: a random fraction of pixels, 1 on foreground, 2 on background, 0 elsewhere."""
    keep = rng.random(truth.shape) < fraction
    return np.where(keep, np.where(truth, 1, 2), 0).astype(np.uint8)


def iou_of(model_path, image, truth) -> float:
    model = load_model(model_path)
    return segmentation_scores(predict(model, image) > 0.5, truth).iou


@pytest.mark.parametrize("mode", ["dense", "scribbles"])
def test_finetune_improves_iou(mode, stack, base, tmp_path):
    """Five annotated slices, 64 steps from an untrained base; IoU on the sixth, unseen slice.

    Measured (seed 0, and seeds 1-5 for the spread): 0.92-0.93 in both modes, natively and with oneDNN capped at
    SSE4.1/AVX/AVX2. The held-out IoU of such a short run from scratch jumps from below 0.8 to above 0.85 once the
    network generalizes beyond its batch statistics (epochs 3-5 here, later with fewer slices: with two slices and
    six epochs it ended anywhere in 0.33-0.93 depending on the processor and seed), so the run has three epochs to
    spare. Not learnt yet: the untrained base scores 0.0, everything-membrane 0.2.
    """
    images, truth = stack
    annotated, unseen = range(5), 5
    labels = np.zeros(images.shape, np.uint8)
    rng = np.random.default_rng(0)
    for z in annotated:
        labels[z] = truth[z].astype(np.uint8) if mode == "dense" else scribbles_from(truth[z], rng)
    out = tmp_path / f"{mode}.safetensors"
    before = iou_of(base, images[unseen], truth[unseen])
    recipe = finetune_recipe(epochs=8, lr=5e-3, crop=96, steps_per_epoch=8)
    request = FinetuneRequest(images, labels, mode=mode, base=base, out=out, train=recipe, image_name="em")
    result = run_job(finetune_job(request))
    after = iou_of(out, images[unseen], truth[unseen])
    assert after > 0.8 and after > before + 0.5, (before, after)
    card = load_model(out).metadata.card
    assert card["finetune"]["slices"] == list(annotated) and card["finetune"]["mode"] == mode
    assert card["finetune"]["epochs"] == result.epochs_done == 8


def test_unlabelled_pixels_do_not_reach_the_training_pairs(stack):
    images, truth = stack
    labels = scribbles_from(truth[0], np.random.default_rng(1))
    (pair,) = annotation_pairs(images[0], labels, mode="scribbles", slices=[0], normalization=Normalization(),
                               in_channels=1)
    assert np.array_equal(pair.ignore, labels == 0)
    assert np.array_equal(pair.mask > 0, labels == 1)


def test_stop_mid_epoch_keeps_best_weights_and_preview(stack, base, tmp_path):
    images, truth = stack
    labels = np.zeros(images.shape, np.uint8)
    labels[0], labels[1] = truth[0], truth[1]
    out = tmp_path / "stopped.safetensors"
    request = FinetuneRequest(images, labels, base=base, out=out, train=finetune_recipe(epochs=5, crop=64,
                              steps_per_epoch=4), holdout=1, preview_slice=2)
    previews = []

    def watch(report):
        if "preview" in report.metrics:
            previews.append(report.metrics["preview"])
        return report.step == 6  # mid second epoch

    result = run_job(finetune_job(request), watch)
    assert result.stopped == "stopped" and result.steps_done == 6
    assert previews and previews[0].shape == images.shape[1:]
    model = load_model(out)
    assert model.metadata.card["finetune"]["holdout"] == 1


def test_annotations_are_copied_when_training_starts(stack, base, tmp_path):
    images, truth = stack
    labels = np.zeros(images.shape, np.uint8)
    labels[0] = truth[0]
    request = FinetuneRequest(images, labels, base=base, out=tmp_path / "m.safetensors",
                              train=finetune_recipe(epochs=1, crop=64, steps_per_epoch=2))
    labels[:] = 0  # the user keeps painting (here: erases everything) after pressing Fine-tune
    images[:] = 0
    result = run_job(finetune_job(request))
    assert result.epochs_done == 1
    assert request.labels[0].any()


@pytest.mark.parametrize("labels,mode,message", [
    (np.zeros((2, 16, 16), np.uint8), "dense", "empty"),
    (np.ones((2, 8, 8), np.uint8), "dense", "shape"),
    (np.full((2, 16, 16), 3, np.uint8), "scribbles", "values"),
    (np.pad(np.ones((2, 4, 4), np.uint8), ((0, 0), (0, 12), (0, 12))), "scribbles", "background"),
    (np.ones((2, 16, 16), np.uint8), "dense", "only foreground"),
])
def test_bad_annotations_are_refused_with_a_clear_message(labels, mode, message):
    with pytest.raises(AnnotationError, match=message):
        check_annotations((2, 16, 16), labels, mode)


def test_annotations_are_zoomed_like_the_base_model(stack):
    images, truth = stack
    labels = scribbles_from(truth[0], np.random.default_rng(1))
    (pair,) = annotation_pairs(images[0], labels, mode="scribbles", slices=[0], normalization=Normalization(),
                               in_channels=1, input_scale=2.0)
    h, w = labels.shape
    assert pair.image.shape == (1, 2 * h, 2 * w) and pair.mask.shape == pair.ignore.shape == (2 * h, 2 * w)
    assert np.array_equal(pair.ignore[::2, ::2], labels == 0)
    assert np.array_equal(pair.mask[::2, ::2] > 0, labels == 1)


def test_quick_preset_from_em_improves_the_unseen_slice(tmp_path):
    """The Quick preset's first epoch (15 steps) from the shipped em on a generated EM-like stack em was not
    trained on: the preview that follows it is already better on an unseen slice.

    Measured (AMD EPYC, AVX2; training seeds 0, 1, 2): membrane IoU of the unseen slice 0.710 (em) -> 0.832,
    0.797, 0.754; the test asks for +0.02.
    """
    images, truth = em_like_stack(depth=4, size=256, cells=40, seed=3)
    labels = np.zeros(images.shape, np.uint8)
    labels[:3] = truth[:3]
    out = tmp_path / "quick.safetensors"
    recipe = finetune_recipe("quick", epochs=1, max_minutes=0.0)
    assert recipe.freeze_stages == 2 and recipe.focus > 0 and recipe.crop == 128 and recipe.steps_per_epoch == 15
    request = FinetuneRequest(images, labels, base="em", out=out, train=recipe, slices=[0, 1, 2], preview_slice=3)
    previews = []
    result = run_job(finetune_job(request), lambda r: previews.extend([r] if "preview" in r.metrics else []))
    before = iou_of("em", images[3], truth[3])
    after = segmentation_scores(previews[0].metrics["preview"] > 0.5, truth[3]).iou
    assert after > before + 0.02, (before, after)
    assert previews[0].step == result.steps_done == 15
    card = load_model(out).metadata.card
    assert card["finetune"]["preset"] == "custom" and card["foreground"] == "membrane"  # inherited from em
    assert finetune_recipe("quick").max_minutes == 2.0 and finetune_recipe().crop == 256  # Thorough: today's recipe


def test_label_meaning_check_and_the_flipped_model(stack, base, tmp_path):
    from napari_alnet.training.meaning import check_meaning, flipped_model

    images, truth = stack
    membranes = lambda image: truth[0].astype(np.float32)  # noqa: E731  (a model that knows the membranes)
    card = {"foreground": "membrane", "background": "cell interior"}
    cells = (~truth[:1]).astype(np.uint8)
    found = check_meaning(membranes, images[:1], cells, mode="dense", slices=[0], threshold=0.5, card=card)
    assert found.flipped and found.on_background == 1.0 and "cell interior" in found.message("em")
    same = check_meaning(membranes, images[:1], truth[:1].astype(np.uint8), mode="dense", slices=[0],
                         threshold=0.5, card=card)
    assert not same.flipped and same.on_background == 0.0
    other = np.zeros_like(cells)  # a new target on the model's background (organelles inside cells): no flip
    other[0, 40:60, 40:60] = ~truth[0, 40:60, 40:60]
    assert not check_meaning(membranes, images[:1], other, mode="dense", slices=[0], threshold=0.5,
                             card=card).flipped
    scribbles = np.where(truth[:1], 1, 2).astype(np.uint8)  # membranes as 1, cells as 2: matches
    assert not check_meaning(membranes, images[:1], scribbles, mode="scribbles", slices=[0], threshold=0.5,
                             card=card).flipped
    model, _ = load_weights(base)
    model.eval()
    inverted = flipped_model(base, model.config).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(inverted(x)), 1 - torch.sigmoid(model(x)), atol=1e-5)


def test_flipped_fine_tune_records_the_new_meaning(stack, tmp_path):
    images, truth = stack
    labels = np.zeros(images.shape, np.uint8)
    labels[0] = ~truth[0]
    out = tmp_path / "cells.safetensors"
    request = FinetuneRequest(images, labels, base="em", out=out, slices=[0], flip=True, parent_name="em",
                              version=1, train=finetune_recipe("quick", epochs=1, steps_per_epoch=1, crop=64))
    run_job(finetune_job(request))
    meta = load_model(out).metadata
    assert meta.card["foreground"] == "cell interior" and meta.card["background"] == "membrane"
    assert meta.objects == "foreground" and meta.card["finetune"]["flipped"] and meta.card["finetune"]["parent"] == "em"
    assert "label 1 = cell interior" in meta.summary


def test_new_versions_never_reuse_a_file(tmp_path):
    from napari_alnet.engine.registry import next_version, version_of

    first = tmp_path / "mito.safetensors"
    assert next_version(first) == (first, 1)
    first.write_bytes(b"v1")
    assert next_version(first) == (tmp_path / "mito-v2.safetensors", 2)
    (tmp_path / "mito-v2.safetensors").write_bytes(b"v2")
    (tmp_path / "mitochondria.safetensors").write_bytes(b"another model")
    assert next_version(first) == next_version(tmp_path / "mito-v2.safetensors") == (
        tmp_path / "mito-v3.safetensors", 3)
    assert version_of("a-v12.safetensors") == ("a", 12) and version_of("a-vx.safetensors") == ("a-vx", 1)


def native_bf16(monkeypatch, native: bool) -> None:
    """Make ``precision_check`` and ``auto`` see a CPU with (or without) native bf16, whatever this one has."""
    from napari_alnet.engine import devices

    reason = "native bf16: avx512_bf16 (test)" if native else "no avx512_bf16 or amx_bf16 (test)"
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: devices.BF16Support(native, reason))


def test_fine_tuned_card_validates_bf16_on_the_held_out_slice_and_auto_runs_it(stack, tmp_path, monkeypatch):
    """Measured on the held-out 128² slice (AMD EPYC Zen 5): label agreement 99.95 %, largest metric change 0.0003
    with native bf16; 99.96 % and 0.0012 under ONEDNN_MAX_CPU_ISA=AVX2 (bf16 emulated, the test patches native)."""
    native_bf16(monkeypatch, True)
    images, truth = stack
    labels = np.zeros(images.shape, np.uint8)
    labels[:3] = truth[:3]
    out = tmp_path / "tuned.safetensors"
    request = FinetuneRequest(images, labels, base="em", out=out, holdout=2,
                              train=finetune_recipe("quick", epochs=1, steps_per_epoch=2, crop=64))
    run_job(finetune_job(request))
    model = load_model(out)
    entry = model.metadata.card["bf16"]
    assert entry["validated"] is True and entry["slices"] == {"held_out": [2]} and not entry["on_training_slices"]
    assert entry["images"] == 1 and "held-out slice 2" in entry["split"] and "native bf16" in entry["measured"]
    assert entry["label_agreement"] >= 0.995 and entry["max_metric_change"] <= entry["limit"] == 0.002
    assert set(entry["metric_changes"]) >= {"whole fg iou", "whole bg accuracy"} and entry["seconds"] > 0
    int8 = model.metadata.card["int8"]
    assert int8["validated"] is False and "not quantized" in int8["reason"]
    assert model.precision == "bf16" and "validated in the model card" in model.precision_choice.reason


def test_without_native_bf16_the_check_is_skipped_and_auto_keeps_fp32(stack, tmp_path, monkeypatch):
    from napari_alnet.training import precision_check

    native_bf16(monkeypatch, False)
    monkeypatch.setattr(precision_check, "compare", lambda *a, **k: pytest.fail("bf16 was measured emulated"))
    images, truth = stack
    labels = np.zeros(images.shape, np.uint8)
    labels[0] = truth[0]
    out = tmp_path / "tuned.safetensors"
    run_job(finetune_job(FinetuneRequest(images, labels, base="em", out=out,
                                         train=finetune_recipe("quick", epochs=1, steps_per_epoch=1, crop=64))))
    model = load_model(out)
    entry = model.metadata.card["bf16"]
    assert entry["validated"] is False and "no avx512_bf16" in entry["skipped"] and "emulated" in entry["measured"]
    assert model.precision == "fp32"


def test_without_a_held_out_slice_the_card_says_it_measured_training_slices(stack, tmp_path, monkeypatch):
    native_bf16(monkeypatch, True)
    images, truth = stack
    labels = np.zeros(images.shape, np.uint8)
    labels[:3] = np.where(truth[:3], 1, 2)  # scribbles everywhere on slices 0-2
    out = tmp_path / "tuned.safetensors"
    request = FinetuneRequest(images, labels, mode="scribbles", base="em", out=out, preview_slice=4,
                              train=finetune_recipe("quick", epochs=1, steps_per_epoch=1, crop=64))
    run_job(finetune_job(request))
    entry = load_model(out).metadata.card["bf16"]
    assert entry["on_training_slices"] and entry["slices"] == {"trained": [0, 1], "unannotated": [4]}
    assert entry["images"] == 3 and "trained on" in entry["split"] and "slice 4 (not annotated)" in entry["split"]
    assert all(k.startswith("painted ") for k in entry["metric_changes"])
