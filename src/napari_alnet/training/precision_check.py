"""The accuracy guard of a faster precision (bf16, int8) against fp32, and the model-card entry it leaves.

A precision passes when no metric (accuracy, IoU, Dice, precision, recall of both classes; mean over the images)
moves by more than ``LIMIT`` (0.002) from fp32 and the pixel labels agree on at least ``MIN_AGREEMENT`` (99.5 %)
— measured on images the model was not trained (or calibrated) on. ``compare`` runs it; ``card_entry`` keeps the
verdict and its figures (``card["bf16"]`` / ``card["int8"]``, what ``engine.devices`` reads). The shipped models'
entries come from ``benchmarks/precision_accuracy.py`` (their test splits); a fine-tuned model's from
``check_finetuned`` when its weights are saved (its held-out slice, see ``annotated_guard``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..engine import devices
from ..engine.segmenter import Segmenter
from ..model.metadata import ModelMetadata
from ..model.network import SegmentationNetwork
from .metrics import segmentation_scores

#: The largest metric change (absolute) a validated precision may cause.
LIMIT = 0.002
#: The smallest pixel label agreement with fp32 a validated precision may have.
MIN_AGREEMENT = 0.995
#: Slices with annotations a fine-tune's guard uses at most when it has no held-out slice (it keeps the check short).
MAX_TRAINING_SLICES = 2
#: Validation images ``alnet train`` checks bf16 on at most.
MAX_FILE_IMAGES = 8
#: What a fine-tuned model's card says about int8.
INT8_NOT_BUILT = ("not quantized: calibrating and quantizing a fine-tuned model takes minutes, so it is not done "
                  "when it is saved; precision auto runs it in bf16 where validated, else fp32")


@dataclass(frozen=True)
class GuardImage:
    """One image of a guard run. ``truth`` (bool, the image's spatial shape) scores the metrics (None: label
    agreement only); ``regions``: scope name -> where the truth counts (None: the whole image)."""

    image: np.ndarray
    truth: np.ndarray | None = None
    regions: dict[str, np.ndarray | None] = field(default_factory=lambda: {"whole": None})
    rgb: bool | None = None


def scores(pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None) -> dict[str, float]:
    """Every metric of both classes: ``fg iou``, ``bg precision``, ..."""
    fg = segmentation_scores(pred, truth, region).as_dict()
    bg = segmentation_scores(~pred, ~truth, region).as_dict()
    return {f"fg {k}": v for k, v in fg.items()} | {f"bg {k}": v for k, v in bg.items()}


def compare(fp32: Segmenter, other: Segmenter, images: Iterable[GuardImage], *, split: str) -> dict[str, Any]:
    """fp32 against ``other`` (the same model in another precision) on ``images``; the result of ``summarize``."""
    precision = other.precision
    per: dict[str, dict[str, list[dict[str, float]]]] = {}
    agree, pixels, max_dp, count = 0, 0, 0.0, 0
    seconds = {"fp32": 0.0, precision: 0.0}
    for item in images:
        probs = {}
        for label, model in (("fp32", fp32), (precision, other)):
            start = time.perf_counter()
            probs[label] = model.predict(item.image, rgb=item.rgb)
            seconds[label] += time.perf_counter() - start
        labels = {k: p > fp32.threshold for k, p in probs.items()}
        agree += int((labels["fp32"] == labels[precision]).sum())
        pixels += labels["fp32"].size
        max_dp = max(max_dp, float(np.abs(probs["fp32"] - probs[precision]).max()))
        count += 1
        if item.truth is None:
            continue
        for scope, region in item.regions.items():
            by = per.setdefault(scope, {"fp32": [], precision: []})
            for label in ("fp32", precision):
                by[label].append(scores(labels[label], item.truth, region))
    if not count:
        raise ValueError("the precision guard needs at least one image")
    return summarize(split, per, precision, agree / pixels, max_dp, seconds, images=count)


def summarize(split: str, per: dict, precision: str, agreement: float, max_dp: float, seconds: dict, *,
              images: int) -> dict[str, Any]:
    """The verdict: per metric fp32, ``precision`` and the change; validated when the largest change is at most
    ``LIMIT`` and the label agreement at least ``MIN_AGREEMENT`` (never without a metric to compare)."""
    metrics = {}
    for scope, by in per.items():
        for key in by["fp32"][0]:
            a = float(np.mean([r[key] for r in by["fp32"]]))
            b = float(np.mean([r[key] for r in by[precision]]))
            metrics[f"{scope} {key}"] = {"fp32": round(a, 5), precision: round(b, 5), "change": round(b - a, 5)}
    worst = max((abs(m["change"]) for m in metrics.values()), default=None)
    validated = worst is not None and worst <= LIMIT and agreement >= MIN_AGREEMENT
    return {"split": split, "images": images, "label_agreement": round(agreement, 6),
            "max_probability_difference": round(max_dp, 4), "max_metric_change": worst, "limit": LIMIT,
            "min_label_agreement": MIN_AGREEMENT, "validated": validated, "metrics": metrics,
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def card_entry(result: dict[str, Any], *, measured: str) -> dict[str, Any]:
    """What a model card keeps of a ``compare`` result: the verdict, the figures behind it, how it was measured."""
    keep = ("validated", "split", "images", "label_agreement", "max_probability_difference", "max_metric_change",
            "limit", "min_label_agreement")
    entry = {k: result[k] for k in keep if k in result}
    entry["metric_changes"] = {k: m["change"] for k, m in result["metrics"].items()}
    entry["measured"] = measured
    return entry


def bf16_measured(where: str) -> str:
    """``card["bf16"]["measured"]``: where, torch, the CPU and whether its bf16 was native or emulated."""
    support = devices.cpu_bf16_support()
    kind = f"native bf16: {support.reason.removeprefix('native bf16: ')}" if support.native else "emulated bf16"
    return f"{where}, torch {torch.__version__}, {platform.machine()} CPU ({kind})"


# --- a fine-tuned model ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuardSet:
    """The images a fine-tuned model's guard runs on, what to call them (``split``), their slice numbers by role
    (``held_out``, ``trained``, ``unannotated``) and whether the metrics come from slices it was trained on."""

    images: list[GuardImage]
    split: str
    slices: dict[str, list[int | str]]
    on_training_slices: bool


def annotated_guard(stack: np.ndarray, labels: np.ndarray, *, mode: str, trained: Sequence[int],
                    held_out: int | None, prefer: int | None = None, numbers: Sequence[int] | None = None,
                    rgb: bool = False) -> GuardSet:
    """A fine-tune's guard images from its (Z, Y, X[, C]) ``stack`` and (Z, Y, X) ``labels`` (dense: > 0 is
    foreground; scribbles: 1 foreground, 2 background, 0 not scored).

    The held-out slice when there is one. Without one, the metrics can only come from annotated slices it trained on
    (at most ``MAX_TRAINING_SLICES``; ``on_training_slices`` says so), and one slice without annotations (``prefer``
    if it has none, else the first) adds its label agreement, which needs no truth. ``numbers``: each slice's
    number as the user knows it (for ``split`` and ``slices``)."""
    name = (lambda z: z) if numbers is None else (lambda z: numbers[z])
    if held_out is not None:
        images = [_annotated(stack[held_out], labels[held_out], mode, rgb)]
        return GuardSet(images, f"held-out slice {name(held_out)} ({mode} annotations)",
                        {"held_out": [name(held_out)]}, False)
    used = list(trained)[:MAX_TRAINING_SLICES]
    images = [_annotated(stack[z], labels[z], mode, rgb) for z in used]
    free = [z for z in range(labels.shape[0]) if not np.any(labels[z])]
    extra = [prefer if prefer in free else free[0]] if free else []
    images += [GuardImage(np.asarray(stack[z]), rgb=rgb) for z in extra]
    split = (f"no slice held out: metrics on training slice(s) {', '.join(str(name(z)) for z in used)} "
             f"({mode} annotations, trained on)")
    if extra:
        split += f", label agreement also on slice {name(extra[0])} (not annotated)"
    return GuardSet(images, split, {"trained": [name(z) for z in used], "unannotated": [name(z) for z in extra]},
                    True)


def files_guard(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], *, split: str, on_training_slices: bool,
                limit: int = MAX_FILE_IMAGES) -> GuardSet:
    """The guard images of ``alnet train``: (name, raw image, foreground) pairs (``data.raw_pairs``), the first
    ``limit`` of them (colour read as the engine reads it)."""
    used = list(pairs)[:limit]
    images = [GuardImage(image, truth) for _, image, truth in used]
    role = "trained" if on_training_slices else "held_out"
    return GuardSet(images, split, {role: [name for name, _, _ in used]}, on_training_slices)


def _annotated(image: np.ndarray, labels: np.ndarray, mode: str, rgb: bool) -> GuardImage:
    labels = np.asarray(labels)
    if mode == "scribbles":
        return GuardImage(np.asarray(image), labels == 1, {"painted": labels != 0}, rgb)
    return GuardImage(np.asarray(image), labels > 0, {"whole": None}, rgb)


def check_finetuned(network: SegmentationNetwork, metadata: ModelMetadata, guard: GuardSet) -> dict[str, dict]:
    """A fine-tuned model's ``bf16`` and ``int8`` card entries: bf16 validated against fp32 on ``guard``'s images
    on this CPU (skipped, validated false, where bf16 is not native here: emulated it is several times slower, and
    ``auto`` would not pick it anyway; or where the check itself fails, saying why); int8 not validated
    (``INT8_NOT_BUILT``)."""
    int8 = {"validated": False, "reason": INT8_NOT_BUILT}
    support = devices.cpu_bf16_support()
    if not support.native:
        return {"bf16": {"validated": False, "skipped": f"not measured: {support.reason}; precision auto runs fp32 "
                         "on this CPU anyway", "measured": bf16_measured("napari_alnet fine-tune save")},
                "int8": int8}
    start = time.perf_counter()
    where = "napari_alnet fine-tune save (training.precision_check)"
    try:
        fp32 = Segmenter.from_network(network, metadata, device="cpu", precision="fp32")
        result = compare(fp32, fp32.with_precision("bf16"), guard.images, split=guard.split)
    except (RuntimeError, ValueError) as exc:  # the model is saved either way; it just keeps fp32 under auto
        return {"bf16": {"validated": False, "skipped": f"the check failed: {exc}", "measured": bf16_measured(where)},
                "int8": int8}
    entry = card_entry(result, measured=bf16_measured(where))
    entry |= {"slices": guard.slices, "on_training_slices": guard.on_training_slices,
              "seconds": round(time.perf_counter() - start, 3)}
    return {"bf16": entry, "int8": int8}


__all__ = ["INT8_NOT_BUILT", "LIMIT", "MIN_AGREEMENT", "GuardImage", "GuardSet", "annotated_guard", "card_entry",
           "check_finetuned", "compare", "files_guard", "scores", "summarize"]
