"""What a weight file says about its network besides the tensors: ``ModelMetadata`` and its ``Normalization``.

These are descriptions (plain data, NumPy only); ``io.weights`` reads and writes them, the engine applies them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .config import ALNetConfig
from .family import DEFAULT_FAMILY, Family, config_from_json, family_of
from .network import NetworkConfig

FORMAT = "napari-alnet"
FORMAT_VERSION = "1"

NORMALIZATION_KINDS = ("percentile", "dtype_range")
#: Normalized model inputs are clipped to +-this (real images stay within a few units; a float64 outlier of 1e300
#: would otherwise become inf in float32 and NaN in the network).
INPUT_LIMIT = 1e4
RGB_TO_GRAY = ("luminance", "refuse")
OBJECTS = ("foreground", "background")


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
        if not (0.0 <= self.low < self.high <= 100.0):
            raise ValueError(f"normalization percentiles must satisfy 0 <= low < high <= 100, got low={self.low}, "
                             f"high={self.high}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"normalization mean must be finite and std finite and > 0, got mean={self.mean}, "
                             f"std={self.std}")

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
        lo, hi = percentiles(sample, (self.low, self.high))
        return float(lo), float(hi)

    def apply(self, image: np.ndarray, bounds: tuple[float, float] | None = None) -> np.ndarray:
        """float32 model input from ``image`` (bounds computed from it unless given)."""
        lo, hi = bounds if bounds is not None else self.bounds(image)
        if image.dtype.itemsize > 4 or max(abs(lo), abs(hi)) > 1e30 or 0 < hi - lo < 1e-30:
            # float64 / 64-bit integers / extreme float32: scale in float64, where (x - lo) cannot overflow
            return _scaled(image, lo, hi, self.mean, self.std)
        scale = 1.0 / (hi - lo) if hi > lo else 1.0
        with np.errstate(over="ignore"):  # float32 outliers far beyond the bounds: clipped below
            out = (image.astype(np.float32) - np.float32(lo)) * np.float32(scale)
            out = (out - np.float32(self.mean)) / np.float32(self.std)
        return np.clip(out, -INPUT_LIMIT, INPUT_LIMIT, out=out)


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, qs)`` (linear interpolation), equal to it bit for bit; 8- and 16-bit integers are
    counted in a histogram (``np.bincount``: one pass, no sort — 10 ms less per 512² slice than a partition)."""
    values = np.asarray(values)
    if values.size == 0 or values.dtype.kind not in "iu" or values.dtype.itemsize > 2:
        return [float(v) for v in np.percentile(values, qs)]
    shift = -int(np.iinfo(values.dtype).min)
    flat = values.ravel()
    counts = np.bincount(flat.astype(np.int32) + shift if shift else flat)
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])

    def order(k: int) -> float:  # the k-th smallest value (0-based)
        return float(np.searchsorted(cumulative, k, side="right") - shift)

    out = []
    for q in qs:
        virtual = (n - 1) * (float(q) / 100)  # numpy's "linear" method, step by step in float64
        below = math.floor(virtual)
        if virtual >= n - 1:
            out.append(order(n - 1))
            continue
        gamma = virtual - below
        a, b = order(below), order(below + 1)
        out.append(b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma)
    return out


def _scaled(image: np.ndarray, lo: float, hi: float, mean: float, std: float) -> np.ndarray:
    """float32 ``((x - lo) / (hi - lo) - mean) / std`` computed in float64 on quarters (so that neither ``x - lo`` nor
    ``hi - lo`` can overflow), clipped to +-``INPUT_LIMIT`` so that outliers stay finite in float32."""
    x = image.astype(np.float64) / 4
    lo4, span4 = lo / 4, hi / 4 - lo / 4
    scale = 1.0 / span4 if span4 > 0 else 4.0
    with np.errstate(over="ignore"):
        out = ((x - lo4) * scale - mean) / std
    return np.clip(out, -INPUT_LIMIT, INPUT_LIMIT).astype(np.float32)


def check_threshold(threshold: float, what: str = "threshold") -> float:
    """``threshold`` as a float strictly between 0 and 1; ``ValueError`` naming ``what`` otherwise (NaN included)."""
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{what} must lie strictly between 0 and 1, got {threshold!r}")
    return value


def network_shape(shape: tuple[int, int], input_size: tuple[int, int] | None = None,
                  input_scale: float = 1.0) -> tuple[int, int]:
    """The (Y, X) at which the network sees an image of spatial ``shape``."""
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    return max(1, round(shape[0] * input_scale)), max(1, round(shape[1] * input_scale))


@dataclass
class ModelMetadata:
    """Everything a weight file says about its network besides the tensors; ``config`` is a registered
    family's (``family``), AL-Net's by default."""

    config: NetworkConfig = field(default_factory=ALNetConfig)
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
        check_threshold(self.threshold)
        if self.rgb_to_gray not in RGB_TO_GRAY:
            raise ValueError(f"rgb_to_gray must be one of {RGB_TO_GRAY}, got {self.rgb_to_gray!r}")
        if self.objects not in OBJECTS:
            raise ValueError(f"objects must be one of {OBJECTS}, got {self.objects!r}")
        if self.input_size is not None and not all(isinstance(n, int) and 0 < n <= 65536 for n in self.input_size):
            raise ValueError(f"input_size must be two positive integers, got {self.input_size}")

    def network_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (Y, X) at which this model's network sees an image of spatial ``shape``."""
        return network_shape(shape, self.input_size, self.input_scale)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def family(self) -> Family:
        """The registered network family of ``config``."""
        return family_of(self.config)

    @property
    def summary(self) -> str:
        return str(self.card.get("summary", f"{self.family.title} ({self.modality}, {self.in_channels}-channel input)"))

    def to_strings(self) -> dict[str, str]:
        """The metadata as strings; ``architecture`` (the family) only for a family other than AL-Net, so that
        AL-Net's strings — and what is derived from them, e.g. a volume run's model identity — stay as they were."""
        family = self.family.name
        architecture = {} if family == DEFAULT_FAMILY else {"architecture": family}
        return architecture | {
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
            config=config_from_json(meta.get("architecture", DEFAULT_FAMILY), meta["config"]),
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
