from __future__ import annotations

import numpy as np
import pytest

from napari_alnet import load_model, predict
from napari_alnet.engine.normalization import Normalization
from napari_alnet.engine.progress import run_job
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import ModelMetadata, save_weights
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
