"""Evaluating a model on image/mask files: per-image and mean +- std scores for both classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.progress import Job, Progress
from ..engine.segmenter import Segmenter
from ..io.images import list_images, mask_foreground, mask_plane
from ..io.stack_reader import read_image
from .metrics import Scores, segmentation_scores


@dataclass
class ImageScores:
    name: str
    foreground: Scores
    background: Scores


def evaluate_job(model: Segmenter, pairs: Sequence[tuple[Path, Path]], *, invert: bool = False,
                 fov: str | Path | None = None, threshold: float | None = None, tta: bool = False
                 ) -> Job[list[ImageScores]]:
    """Scores per image (foreground: ``io.images.mask_foreground``, or not with ``invert``); ``fov`` restricts
    to a FOV mask."""
    threshold = model.threshold if threshold is None else threshold
    fov_by_stem = {f.stem: f for f in list_images(fov)} if fov else {}
    rows = []
    for i, (image_file, mask_file) in enumerate(pairs):
        truth = mask_foreground(mask_plane(read_image(mask_file)), mask_file) != invert
        pred = model.predict(read_image(image_file), tta=tta) > threshold
        if pred.shape != truth.shape:
            raise ValueError(f"{mask_file}: mask shape {truth.shape} does not match image {pred.shape}")
        region = None
        if fov:
            if image_file.stem not in fov_by_stem:
                raise ValueError(f"no FOV mask for {image_file.name} in {fov}")
            fov_file = fov_by_stem[image_file.stem]
            region = mask_foreground(mask_plane(read_image(fov_file)), fov_file)
        rows.append(ImageScores(image_file.stem, segmentation_scores(pred, truth, region),
                                segmentation_scores(~pred, ~truth, region)))
        yield Progress(i + 1, len(pairs), image_file.name)
    return rows


def summarize(rows: Sequence[ImageScores]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std of every score, per class."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for cls in ("foreground", "background"):
        table = {k: [getattr(r, cls).as_dict()[k] for r in rows] for k in rows[0].foreground.as_dict()}
        out[cls] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in table.items()}
    return out
