"""Live training's Qt-free core: the mailbox hand-off, previews from the newest snapshot, stop saves, cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_alnet import load_model
from napari_alnet.engine import devices
from napari_alnet.engine.progress import Progress, stop_job
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import ModelMetadata, save_weights
from napari_alnet.model import ALNet
from napari_alnet.training.finetune import FinetuneRequest, finetune_recipe
from napari_alnet.training.live import LiveConfig, Mailbox, live_job

FAST = LiveConfig(preview_seconds=0.0, min_steps=2, idle_seconds=0.01)


@pytest.fixture(scope="module")
def stack():
    return em_like_stack(depth=3, size=64, cells=8, seed=1)


@pytest.fixture()
def base(tmp_path):
    return save_weights(ALNet(), ModelMetadata(card={"summary": "untrained base"}), tmp_path / "base.safetensors")


def scribbles(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    keep = np.random.default_rng(seed).random(truth.shape) < 0.2
    return np.where(keep, np.where(truth, 1, 2), 0).astype(np.uint8)


def request_for(stack, base, tmp_path) -> FinetuneRequest:
    images, _truth = stack
    return FinetuneRequest(images, np.zeros(images.shape, np.uint8), mode="scribbles", base=base,
                           out=tmp_path / "live.safetensors", train=finetune_recipe("quick", batch_size=2, crop=64),
                           image_name="em", version=1)


def until(job, condition, limit: int = 200) -> Progress:
    for _ in range(limit):
        report = next(job)
        if condition(report):
            return report
    raise AssertionError(f"no such report in {limit}")


def test_mailbox_hands_over_a_copy_of_the_newest_labels():
    box = Mailbox(view=2)
    labels = np.zeros((2, 4, 4), np.uint8)
    assert box.newest() is None and box.view == 2
    first = box.post(labels)
    labels[0, 0, 0] = 1  # painting after the post does not change the snapshot
    assert box.newest().labels.sum() == 0 and box.newest(since=first) is None
    second = box.post(labels)
    assert second == first + 1 and box.newest(since=first).labels[0, 0, 0] == 1
    box.show(1)
    assert box.view == 1


def test_previews_follow_the_newest_painting_and_stop_saves_it(stack, base, tmp_path):
    _images, truth = stack
    box = Mailbox(view=0)
    job = live_job(request_for(stack, base, tmp_path), box, config=FAST)
    waiting = next(job)
    assert "paint" in waiting.message and "preview" not in waiting.metrics  # nothing painted: nothing trained
    painted = np.zeros(truth.shape, np.uint8)
    painted[0] = scribbles(truth[0])
    first = box.post(painted)
    report = until(job, lambda r: "preview" in r.metrics)
    assert report.metrics["snapshot"] == first and report.metrics["slices"] == [0]
    assert report.metrics["preview"].shape == (64, 64) and report.metrics["steps_on_snapshot"] >= 2
    painted[1] = scribbles(truth[1], seed=1)  # painting goes on while it trains: picked up by the next round
    second = box.post(painted)
    box.show(1)
    report = until(job, lambda r: "preview" in r.metrics and r.metrics["snapshot"] == second)
    assert report.metrics["slices"] == [0, 1] and report.metrics["preview_slice"] == 1
    result = stop_job(job)
    assert result is not None and result.out.is_file() and result.steps_done >= 4
    card = load_model(result.out).metadata.card
    assert card["finetune"]["live"] and card["finetune"]["slices"] == [0, 1]
    assert card["finetune"]["steps"] == result.steps_done and card["finetune"]["version"] == 1
    check_bf16_entry(card["bf16"])


def check_bf16_entry(entry: dict) -> None:
    """Live mode holds no slice out: bf16 is checked on the painted slices (and says so) and the unpainted one."""
    if not devices.cpu_bf16_support().native:
        assert entry["validated"] is False and "not measured" in entry["skipped"]
        return
    assert entry["on_training_slices"] and entry["slices"] == {"trained": [0, 1], "unannotated": [2]}
    assert entry["images"] == 3 and all(k.startswith("painted ") for k in entry["metric_changes"])
    passes = entry["max_metric_change"] <= entry["limit"] and entry["label_agreement"] >= entry["min_label_agreement"]
    assert entry["validated"] is passes


def test_strokes_that_cannot_be_trained_on_keep_the_earlier_snapshot(stack, base, tmp_path):
    _images, truth = stack
    box = Mailbox()
    job = live_job(request_for(stack, base, tmp_path), box, config=FAST)
    painted = np.zeros(truth.shape, np.uint8)
    painted[0] = scribbles(truth[0])
    box.post(painted)
    until(job, lambda r: "preview" in r.metrics)
    painted[:] = 0
    painted[0, :8, :8] = 1  # only foreground left: scribbles need both classes
    box.post(painted)
    report = until(job, lambda r: "not used yet" in r.message)
    assert "background (2)" in report.message
    report = until(job, lambda r: "preview" in r.metrics)
    assert report.metrics["snapshot"] == 1
    job.close()  # closing the job also keeps the newest weights
    assert (tmp_path / "live.safetensors").is_file()


def test_cancel_before_painting_writes_nothing_and_painting_never_waits(stack, base, tmp_path):
    box = Mailbox()
    job = live_job(request_for(stack, base, tmp_path), box, config=FAST)
    next(job)
    done = threading.Event()
    threading.Thread(target=lambda: (box.post(np.zeros((3, 64, 64), np.uint8)), done.set())).start()
    assert done.wait(5)  # the job holds no lock while it waits or trains
    assert stop_job(job) is None
    assert not (tmp_path / "live.safetensors").exists()
