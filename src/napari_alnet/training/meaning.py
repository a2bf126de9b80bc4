"""What label 1 means: a model card's ``foreground`` / ``background`` names, the check that painted annotations
mean the same as the starting model, and the starting model with its meaning flipped (no Qt).

A microscopist who paints cells while ``em`` predicts membranes trains for minutes against the model; the Fine-tune
dock runs ``check_meaning`` before training and, when the painted foreground mostly lies on what the starting model
calls background, offers to flip (``FinetuneRequest.flip``: ``flipped_model`` inverts the output layer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.weights import load_weights, resolve_weights
from ..model.family import build_network
from ..model.network import NetworkConfig, SegmentationNetwork

#: The window of each annotated slice the check predicts (centred on the painted pixels): enough context for the
#: model, little enough to run in the GUI thread (a few 0.1 s).
CHECK_WINDOW = 384
#: At most this many annotated slices are checked.
CHECK_SLICES = 3


def label_meaning(card: dict[str, Any]) -> tuple[str, str]:
    """(what label 1 means, what label 0 means) from a model card; generic names where the card has none."""
    foreground = str(card.get("foreground") or "foreground")
    background = str(card.get("background") or ("background" if foreground == "foreground" else
                                                 f"not {foreground}"))
    return foreground, background


@dataclass(frozen=True)
class MeaningCheck:
    """How painted labels agree with the starting model: ``on_background`` is the fraction of the painted
    foreground the model calls background, ``on_foreground`` the fraction of the painted background it calls
    foreground (NaN where nothing of that class was painted), over ``pixels`` painted pixels."""

    on_background: float
    on_foreground: float
    pixels: int
    foreground: str
    background: str

    @property
    def flipped(self) -> bool:
        """Painted foreground mostly lies on the model's background and (where background was painted) painted
        background mostly on its foreground: the labels mean the opposite (a new target that lies on the model's
        background, e.g. organelles inside cells for ``em``, is not flagged: its painted background is mostly the
        model's background too)."""
        if not self.on_background > 0.5:
            return False
        return bool(np.isnan(self.on_foreground) or self.on_foreground > 0.5)

    def message(self, model: str) -> str:
        return (f"{100 * self.on_background:.0f} % of the foreground you painted is what {model} calls "
                f"{self.background}" + ("" if np.isnan(self.on_foreground) else
                                        f", and {100 * self.on_foreground:.0f} % of the background you painted is "
                                        f"{self.foreground}") +
                f": {model}'s label 1 is {self.foreground}. Flip the labels' meaning (train label 1 as "
                f"{self.background}, starting from {model} inverted)?")


def painted_classes(labels: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(painted foreground, painted background) boolean masks of one annotated slice."""
    if mode == "scribbles":
        return labels == 1, labels == 2
    return labels > 0, labels == 0


def check_meaning(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, *,
                  mode: str, slices: Sequence[int], threshold: float, card: dict[str, Any]) -> MeaningCheck:
    """Compare painted labels with the starting model's prediction (``predict``: image -> probabilities) on a
    window of up to ``CHECK_SLICES`` annotated slices; ``images`` (Z, Y, X[, C]), ``labels`` (Z, Y, X)."""
    fg_hits = fg_total = bg_hits = bg_total = 0
    for z in list(slices)[:CHECK_SLICES]:
        lab = np.asarray(labels[z])
        window = _window(lab != 0)
        fg, bg = painted_classes(lab[window], mode)
        model_fg = np.asarray(predict(np.asarray(images[z][window]))) > threshold
        fg_hits += int(np.count_nonzero(fg & ~model_fg))
        fg_total += int(np.count_nonzero(fg))
        bg_hits += int(np.count_nonzero(bg & model_fg))
        bg_total += int(np.count_nonzero(bg))
    foreground, background = label_meaning(card)
    return MeaningCheck(fg_hits / fg_total if fg_total else float("nan"),
                        bg_hits / bg_total if bg_total else float("nan"), fg_total + bg_total, foreground,
                        background)


def _window(painted: np.ndarray) -> tuple[slice, slice]:
    """A ``CHECK_WINDOW`` square (or the whole slice) centred on the painted pixels' bounding box."""
    ys, xs = np.nonzero(painted)
    h, w = painted.shape
    if not ys.size:
        return slice(None), slice(None)
    edges = []
    for lo, hi, size in ((ys.min(), ys.max(), h), (xs.min(), xs.max(), w)):
        half = min(CHECK_WINDOW, size) // 2
        centre = int(np.clip((lo + hi) // 2, half, size - (min(CHECK_WINDOW, size) - half)))
        edges.append(slice(centre - half, centre - half + min(CHECK_WINDOW, size)))
    return edges[0], edges[1]


def invert_output(model: SegmentationNetwork) -> SegmentationNetwork:
    """Negate the network's ``output_layer()`` (logits -> -logits, probabilities p -> 1 - p) in place: label 1
    becomes label 0."""
    head = model.output_layer()
    with torch.no_grad():
        head.weight.neg_()
        if head.bias is not None:
            head.bias.neg_()
    return model


def flipped_model(base: str | Path | None, config: NetworkConfig) -> SegmentationNetwork:
    """The starting model (weight file or built-in name; a fresh network for ``None``) with its output inverted."""
    if base is None:
        return invert_output(build_network(config))
    model, _ = load_weights(resolve_weights(base))
    if model.is_reparameterized:
        raise ValueError(f"{base}: holds fused (inference-only) weights; fine-tuning needs training-form weights")
    return invert_output(model)
