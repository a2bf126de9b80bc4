"""Fine-tuning from annotations painted in napari (Qt-free core of the fine-tune dock).

Two annotation modes on a Labels array with the image's spatial shape:
- ``dense``: every pixel of an annotated slice is labelled, 0 background and >= 1 foreground; a slice is
  annotated when it has any nonzero pixel;
- ``scribbles``: 1 foreground, 2 background, 0 unlabelled (ignored by the masked loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.progress import Job, Progress, relay
from ..engine.resolution import network_shape, resample_image, resample_mask
from ..engine.segmenter import Segmenter
from ..io.weights import load_weights, resolve_weights, save_weights
from ..model import ALNetConfig
from ..model.metadata import ModelMetadata, Normalization
from .data import Pair, make_pair
from .loop import TrainConfig, TrainResult, train_job
from .meaning import flipped_model, label_meaning
from .precision_check import GuardSet, annotated_guard, check_finetuned

MODES = ("dense", "scribbles")


class AnnotationError(ValueError):
    """Annotations that cannot be trained on; the message says what is wrong and what to do."""


def as_stack(array: np.ndarray, rgb: bool) -> np.ndarray:
    """(Z, Y, X[, C]) view of a 2D or 3D image / labels array."""
    spatial = array.ndim - (1 if rgb else 0)
    return array[None] if spatial == 2 else array


def annotated_slices(labels: np.ndarray) -> list[int]:
    """Indices of the slices of a (Z, Y, X) or (Y, X) labels array that hold any nonzero pixel."""
    stack = labels[None] if labels.ndim == 2 else labels
    return [z for z in range(stack.shape[0]) if np.any(stack[z])]


def check_annotations(image_shape: tuple[int, ...], labels: np.ndarray, mode: str, rgb: bool = False) -> list[int]:
    """Validate annotations against the image; returns the annotated slice indices or raises AnnotationError."""
    if mode not in MODES:
        raise AnnotationError(f"annotation mode must be one of {MODES}, got {mode!r}")
    spatial = tuple(image_shape[:-1]) if rgb else tuple(image_shape)
    if tuple(labels.shape) != spatial:
        raise AnnotationError(f"the annotations have shape {tuple(labels.shape)} but the image's spatial shape is "
                              f"{spatial}; paint them in a Labels layer created for this image")
    if labels.ndim not in (2, 3):
        raise AnnotationError(f"annotations must be 2D or a 3D stack, got {labels.ndim}D")
    slices = annotated_slices(labels)
    if not slices:
        raise AnnotationError("the annotations are empty: paint foreground (and background) on a few slices first")
    values = np.unique(labels)
    if mode == "scribbles":
        extra = [int(v) for v in values if v not in (0, 1, 2)]
        if extra:
            raise AnnotationError(f"scribble mode uses 1 = foreground, 2 = background, 0 = unlabelled; found label "
                                  f"values {extra[:5]}. Repaint with labels 1 and 2, or use dense mode")
        if not (np.any(values == 1) and np.any(values == 2)):
            missing = "foreground (1)" if not np.any(values == 1) else "background (2)"
            raise AnnotationError(f"only one class is painted: add some {missing} scribbles")
    else:
        stack = labels[None] if labels.ndim == 2 else labels
        if all(np.all(stack[z] > 0) for z in slices):
            raise AnnotationError("only foreground is painted on the annotated slices: in dense mode every pixel "
                                  "of a slice is labelled, background 0 and foreground >= 1")
    return slices


def annotation_pairs(image: np.ndarray, labels: np.ndarray, *, mode: str, slices: Sequence[int],
                     normalization: Normalization, in_channels: int, rgb: bool = False,
                     input_size: tuple[int, int] | None = None, input_scale: float = 1.0) -> list[Pair]:
    """Training pairs (copies) from the chosen annotated slices, at the network's working resolution (the base
    model's ``input_size`` / ``input_scale``, see ``engine.resolution``)."""
    images, labs = as_stack(np.asarray(image), rgb), as_stack(np.asarray(labels), False)
    pairs = []
    for z in slices:
        lab = np.array(labs[z])
        if mode == "scribbles":
            mask, ignore = (lab == 1), (lab == 0)
        else:
            mask, ignore = (lab > 0), None
        shape = network_shape(lab.shape, input_size, input_scale)
        image_z = resample_image(np.array(images[z]), shape)
        mask = resample_mask(mask, shape)
        ignore = None if ignore is None else resample_mask(ignore, shape)
        pairs.append(make_pair(image_z, mask, normalization, in_channels, ignore=ignore, name=f"z={z}"))
    return pairs


#: What a fine-tune changes in ``TrainConfig``'s defaults: a short run at a lower learning rate (the *Thorough*
#: preset).
FINETUNE_RECIPE = {"epochs": 10, "lr": 1e-3, "gamma": 0.95, "steps_per_epoch": 25}
#: *Quick* (the Fine-tune dock's default): many short epochs of small crops centred on the labelled pixels, the
#: first two encoder stages frozen (as accurate, faster steps, a better first preview: benchmarks/finetune_loop.py),
#: so the first preview comes after a few seconds and the run ends within 2 minutes on 2 CPU cores (the time budget
#: stops it cleanly, keeping the best weights). See docs/models.md for its measured held-out IoU and time.
QUICK_RECIPE = {"epochs": 16, "lr": 2e-3, "gamma": 0.9, "steps_per_epoch": 15, "batch_size": 4, "crop": 128,
                "focus": 0.8, "freeze_stages": 2, "max_minutes": 2.0}
PRESETS = {"quick": QUICK_RECIPE, "thorough": FINETUNE_RECIPE}


def finetune_recipe(preset: str = "thorough", **changes: Any) -> TrainConfig:
    """A fine-tune recipe: ``TrainConfig`` with a preset's changes (``thorough``: ``FINETUNE_RECIPE``, 10 epochs of
    25 steps at lr 1e-3, batches of 4 crops of 256 px, seed 0; ``quick``: ``QUICK_RECIPE``) and then ``changes``,
    e.g. ``finetune_recipe(epochs=3, crop=96)``."""
    if preset not in PRESETS:
        raise ValueError(f"fine-tune preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return TrainConfig(**(PRESETS[preset] | changes))


@dataclass
class FinetuneRequest:
    """Everything a fine-tune run needs; arrays are copied when the request is made."""

    image: np.ndarray
    labels: np.ndarray
    mode: str = "dense"
    slices: list[int] | None = None
    base: str | Path | None = "em"  # built-in name, weight file, or None = scratch
    out: Path = Path("finetuned.safetensors")
    #: Training options (epochs, learning rate, batches, crops, seed, budget...); see ``finetune_recipe``.
    train: TrainConfig = field(default_factory=finetune_recipe)
    holdout: int | None = None  # slice index kept for validation
    preview_slice: int | None = None
    rgb: bool = False
    image_name: str = "image"
    card: dict = field(default_factory=dict)
    #: When ``image``/``labels`` hold only some slices of a bigger stack (the ones trained, held out and
    #: previewed): the stack's slice number of each, so the model card names the slices as the user knows them.
    slice_numbers: list[int] | None = None
    #: Train label 1 as what the starting model calls background (``meaning.check_meaning`` detects the need): the
    #: starting model's output layer is inverted first, so training starts from a model that agrees.
    flip: bool = False
    #: What label 1 means for the new model (``card["foreground"]``); None: the starting model's (or, flipped, its
    #: background's).
    foreground: str | None = None
    #: The starting model as the user knows it (its registry name), recorded as the new model's parent.
    parent_name: str | None = None
    #: The version of this model in its loop (1, 2, ...; ``engine.registry.next_version``), recorded in the card.
    version: int | None = None

    def __post_init__(self) -> None:
        self.image = np.array(self.image, copy=True)
        self.labels = np.array(self.labels, copy=True)


def base_metadata(base: str | Path | None, rgb: bool) -> ModelMetadata:
    """Metadata to start from: the base model's, or defaults for a scratch model."""
    if base is None:
        return ModelMetadata(config=ALNetConfig(in_channels=3 if rgb else 1))
    _, meta = load_weights(resolve_weights(base))
    return meta


def finetune_job(request: FinetuneRequest) -> Job[TrainResult]:
    """Fine-tune on the request's annotations; yields training Progress (with a ``preview`` probability map
    in ``metrics`` after each epoch when ``preview_slice`` is set); returns the TrainResult."""
    slices = check_annotations(request.image.shape, request.labels, request.mode, request.rgb)
    chosen = [z for z in (request.slices if request.slices is not None else slices) if z in slices]
    if not chosen:
        raise AnnotationError("no annotated slice is selected for training")
    meta = base_metadata(request.base, request.rgb)
    base_card = dict(meta.card)
    pairs = annotation_pairs(request.image, request.labels, mode=request.mode, slices=chosen,
                             normalization=meta.normalization, in_channels=meta.in_channels, rgb=request.rgb,
                             input_size=meta.input_size, input_scale=meta.input_scale)
    val = [p for z, p in zip(chosen, pairs, strict=True) if z == request.holdout]
    train_pairs = [p for z, p in zip(chosen, pairs, strict=True) if z != request.holdout]
    if not train_pairs:
        raise AnnotationError("the only annotated slice is held out for validation; annotate one more slice")
    meta.card = model_card(request, chosen, base_card)
    meta.threshold = 0.5
    init = request.base
    if request.flip:
        init = flipped_model(request.base, meta.config)
        meta.objects = "foreground" if meta.objects == "background" else "background"
    preview_stack = as_stack(request.image, request.rgb)

    def with_preview(report: Progress) -> Progress:
        if request.preview_slice is not None and report.message.endswith("done"):
            report.metrics["preview"] = _preview(request.out, preview_stack[request.preview_slice])
        return report

    job = train_job(train_pairs, val, meta, request.out, config=request.train, init=init)
    result = yield from relay(job, with_preview)
    if result.best_epoch >= 1 and request.out.is_file():
        held_out = request.holdout if val else None
        guard = annotated_guard(as_stack(request.image, request.rgb), as_stack(request.labels, False),
                                mode=request.mode, trained=[z for z in chosen if z != held_out], held_out=held_out,
                                prefer=request.preview_slice, numbers=request.slice_numbers, rgb=request.rgb)
        record_run(request.out, result, guard)
        if result.stopped == "budget" and request.preview_slice is not None:  # the partial epoch may be the best
            yield Progress(result.steps_done, result.steps_done, "time budget reached: best weights saved",
                           {"preview": _preview(request.out, preview_stack[request.preview_slice])})
    return result


def model_card(request: FinetuneRequest, slices: list[int], base_card: dict[str, Any]) -> dict[str, Any]:
    """The model card of a fine-tuned model: what it was tuned from and on, what label 1 means, its parent and
    version (``request.card`` added)."""
    numbers = request.slice_numbers
    if numbers is not None:
        slices = [numbers[z] for z in slices]
    holdout = request.holdout if numbers is None or request.holdout is None else numbers[request.holdout]
    parent = request.parent_name or (str(request.base) if request.base else "scratch")
    meaning = label_meaning(base_card)
    foreground = request.foreground or (meaning[1] if request.flip else meaning[0])
    background = meaning[0] if request.flip else meaning[1]
    version = f" v{request.version}" if request.version else ""
    return {"summary": f"fine-tuned{version} from {parent} on {request.image_name} "
                       f"({request.mode}, slices {', '.join(map(str, slices))}); label 1 = {foreground}",
            "foreground": foreground, "background": background,
            "finetune": {"base": str(request.base) if request.base else "scratch", "image_layer": request.image_name,
                         "slices": slices, "mode": request.mode, "epochs": request.train.epochs,
                         "seed": request.train.seed, "holdout": holdout, "parent": parent,
                         "parent_version": (base_card.get("finetune") or {}).get("version"),
                         "version": request.version, "flipped": request.flip,
                         "preset": _preset_name(request.train)}} | request.card


def _preset_name(config: TrainConfig) -> str:
    """The preset ``config`` was made from (``custom`` if its recipe fields differ from every preset)."""
    for name, changes in PRESETS.items():
        if all(getattr(config, k) == v for k, v in changes.items()):
            return name
    return "custom"


def record_run(weights: Path, result: TrainResult, guard: GuardSet | None = None) -> None:
    """Write what the run measured into the saved model's card — the weights are rewritten as they are:
    ``card["finetune"]``: ``iou`` (the best epoch's validation IoU, or None without a held-out slice), ``steps``,
    ``seconds``; with ``guard``, ``card["bf16"]`` and ``card["int8"]`` (``precision_check.check_finetuned``: bf16
    validated against fp32 on the guard's slices, which ``precision="auto"`` reads)."""
    model, meta = load_weights(weights)
    tune = dict(meta.card.get("finetune") or {})
    tune["iou"] = result.best_metrics.get("iou")
    tune["steps"], tune["seconds"] = result.steps_done, round(result.wall_seconds, 1)
    checks = check_finetuned(model, meta, guard) if guard is not None else {}
    meta.card = dict(meta.card) | {"finetune": tune} | checks
    save_weights(model, meta, weights)


def _preview(weights: Path, image: np.ndarray) -> np.ndarray:
    """Probabilities of the best weights so far on one slice."""
    with torch.no_grad():
        return Segmenter.load(weights, device="cpu").predict(image)


__all__ = ["FINETUNE_RECIPE", "MODES", "AnnotationError", "FinetuneRequest", "Progress", "annotated_slices",
           "annotation_pairs", "check_annotations", "finetune_job", "finetune_recipe"]
