"""What a weight file says about its network besides the tensors: ``ModelMetadata`` and its ``Normalization``.

These are descriptions (plain data, NumPy only); ``io.weights`` reads and writes them, the engine applies them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import ALNetConfig

FORMAT = "napari-alnet"
FORMAT_VERSION = "1"

NORMALIZATION_KINDS = ("percentile", "dtype_range")


@dataclass(frozen=True)
class Normalization:
    """Maps raw intensities to model input.

    ``percentile``: per image (per slice), ``low``/``high`` percentiles over all channels -> [0, 1]; independent
    of dtype, so uint16 and uint8 copies of the same content give the same input.
    ``dtype_range``: integers divided by their dtype's maximum; floats taken as already in [0, 1].
    Then ``(x - mean) / std``.
    """

    kind: str = "percentile"
    low: float = 1.0
    high: float = 99.0
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in NORMALIZATION_KINDS:
            raise ValueError(f"normalization kind must be one of {NORMALIZATION_KINDS}, got {self.kind!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Normalization:
        return cls(**json.loads(text))

    def bounds(self, image: np.ndarray) -> tuple[float, float]:
        """Intensity range mapped to [0, 1] for one image (a subsample is enough for big images)."""
        if self.kind == "dtype_range":
            if np.issubdtype(image.dtype, np.integer):
                info = np.iinfo(image.dtype)
                return (float(min(info.min, 0)), float(info.max))
            return (0.0, 1.0)
        step = max(1, int(np.sqrt(image.size / 1_000_000)))
        sample = image[::step, ::step] if image.ndim >= 2 else image
        lo, hi = np.percentile(sample, [self.low, self.high])
        return float(lo), float(hi)

    def apply(self, image: np.ndarray, bounds: tuple[float, float] | None = None) -> np.ndarray:
        """float32 model input from ``image`` (bounds computed from it unless given)."""
        lo, hi = bounds if bounds is not None else self.bounds(image)
        scale = 1.0 / (hi - lo) if hi > lo else 1.0
        out = (image.astype(np.float32) - np.float32(lo)) * np.float32(scale)
        return (out - np.float32(self.mean)) / np.float32(self.std)


def network_shape(shape: tuple[int, int], input_size: tuple[int, int] | None = None,
                  input_scale: float = 1.0) -> tuple[int, int]:
    """The (Y, X) at which the network sees an image of spatial ``shape``."""
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    return max(1, round(shape[0] * input_scale)), max(1, round(shape[1] * input_scale))


@dataclass
class ModelMetadata:
    """Everything a weight file says about its network besides the tensors."""

    config: ALNetConfig = field(default_factory=ALNetConfig)
    modality: str = "generic"
    normalization: Normalization = field(default_factory=Normalization)
    threshold: float = 0.5
    #: How to give an RGB image to a 1-channel model: ``luminance`` converts, ``refuse`` raises.
    rgb_to_gray: str = "luminance"
    #: Which pixels make up objects for instance labels: ``foreground``, or ``background`` (EM membranes: the
    #: cells are the regions between the predicted membranes).
    objects: str = "foreground"
    #: Models trained at a fixed reduced resolution (dermoscopy): images are resized to (H, W) for the network
    #: and the probabilities resized back; ``None`` = native resolution.
    input_size: tuple[int, int] | None = None
    #: Models trained on zoomed images (``alnet train --scale``): every image is resized by this factor for the
    #: network and the probabilities resized back. Ignored when ``input_size`` is set.
    input_scale: float = 1.0
    #: Model card: summary, training provenance, metrics (free-form JSON).
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.1 <= self.input_scale <= 8:
            raise ValueError(f"input_scale must be between 0.1 and 8, got {self.input_scale}")

    def network_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (Y, X) at which this model's network sees an image of spatial ``shape``."""
        return network_shape(shape, self.input_size, self.input_scale)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def summary(self) -> str:
        return str(self.card.get("summary", f"AL-Net ({self.modality}, {self.in_channels}-channel input)"))

    def to_strings(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_json(),
            "modality": self.modality,
            "in_channels": str(self.in_channels),
            "normalization": self.normalization.to_json(),
            "threshold": repr(float(self.threshold)),
            "rgb_to_gray": self.rgb_to_gray,
            "objects": self.objects,
            "input_size": json.dumps(list(self.input_size) if self.input_size else None),
            "input_scale": repr(float(self.input_scale)),
            "card": json.dumps(self.card, sort_keys=True),
        }

    @classmethod
    def from_strings(cls, meta: dict[str, str]) -> ModelMetadata:
        return cls(
            config=ALNetConfig.from_json(meta["config"]),
            modality=meta.get("modality", "generic"),
            normalization=Normalization.from_json(meta["normalization"]),
            threshold=float(meta.get("threshold", "0.5")),
            rgb_to_gray=meta.get("rgb_to_gray", "luminance"),
            objects=meta.get("objects", "foreground"),
            input_size=_size_or_none(json.loads(meta.get("input_size", "null"))),
            input_scale=float(meta.get("input_scale", "1.0")),
            card=json.loads(meta.get("card", "{}")),
        )


def _size_or_none(value: list[int] | None) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value else None
