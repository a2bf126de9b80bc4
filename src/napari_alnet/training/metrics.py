"""Segmentation metrics for the foreground class: accuracy, IoU, Dice, precision, recall."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    accuracy: float
    iou: float
    dice: float
    precision: float
    recall: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(num: int, den: int) -> float:
    """num/den, with the convention that an empty denominator (nothing to find, nothing found) scores 1."""
    return float(num) / den if den else 1.0


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> Scores:
    """Scores of boolean ``pred`` against boolean ``truth``, optionally only where ``mask`` is true."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != pred.shape:
            raise ValueError(f"mask {mask.shape} does not match prediction {pred.shape}")
        pred, truth = pred[mask], truth[mask]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = pred.size - tp - fp - fn
    return Scores(
        accuracy=_ratio(tp + tn, pred.size),
        iou=_ratio(tp, tp + fp + fn),
        dice=_ratio(2 * tp, 2 * tp + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
    )
