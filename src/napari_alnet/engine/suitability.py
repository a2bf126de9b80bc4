"""Does an image look like a model's training data? A judgement to show the user, never a refusal.

An image is summed up by ``image_statistics`` (channels, dtype, intensity percentiles p1/p50/p99, pixel size in nm
when known); a model card records the same of its training split under ``card["training_statistics"]``
(``training_statistics`` makes that entry; ``benchmarks/model_cards.py --training-statistics`` writes it into the
shipped models). ``assess`` lists what differs — a colour image for a gray model (or the reverse), intensities
unlike the training images', a pixel size far from theirs — and ``suggest`` names a model the image suits better.

The models normalize each image by its own percentiles, so raw intensity levels (8 or 16 bit, brighter or darker)
do not matter to them; where the median sits between p1 and p99 (``median_position``: a dark background with a
few bright objects sits near 0, EM near 0.55) does, and is what is compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..model.metadata import ModelMetadata

STATS_KEY = "training_statistics"
#: How far (in units of the p1..p99 range) an image's median position may lie outside its training images'
#: 5th..95th percentile range before the intensities are called unlike the training data.
POSITION_MARGIN = 0.25
#: Colour images whose channel balance (each channel's share of the summed channel medians) differs from the
#: training data's by more than this (L1) are called unlike it: a fundus photo (red) against skin (pink-beige).
#: Measured spread: ISIC 2018 val images 0.006-0.27 from the dermoscopy card, STARE+DRIVE 0.04-0.27 from fundus.
COLOUR_LIMIT = 0.3
#: A pixel size more than this factor smaller or larger than the training data's is called far from it.
PIXEL_SIZE_FACTOR = 2.0
#: Pixels sampled per image for the statistics.
SAMPLE_PIXELS = 512 * 512


@dataclass(frozen=True)
class ImageStatistics:
    """What ``assess`` compares: ``channels`` (1 gray, 3 colour), dtype, percentiles over all channels,
    per-channel medians (colour images), and the pixel size in nm (``None``: unknown)."""

    channels: int
    dtype: str
    p1: float
    p50: float
    p99: float
    channel_medians: tuple[float, ...] = ()
    pixel_size_nm: float | None = None

    @property
    def median_position(self) -> float:
        """Where the median lies between p1 (0) and p99 (1)."""
        span = self.p99 - self.p1
        return float(np.clip((self.p50 - self.p1) / span, 0.0, 1.0)) if span > 0 else 0.5


def image_statistics(image: np.ndarray, *, rgb: bool, pixel_size_nm: float | None = None) -> ImageStatistics:
    """Statistics of a (Y, X), (Y, X, C) (``rgb``) or stacked image, from an even subsample of its pixels."""
    array = np.asarray(image)
    channels = min(int(array.shape[-1]), 3) if rgb else 1  # RGBA: the alpha channel is left out
    plane = array.reshape(-1, array.shape[-1])[:, :channels] if rgb else array.reshape(-1, 1)
    step = max(1, plane.shape[0] // SAMPLE_PIXELS)
    sample = plane[::step].astype(np.float64)
    finite = sample[np.all(np.isfinite(sample), axis=1)]
    if finite.size == 0:
        finite = np.zeros((1, channels))
    p1, p50, p99 = np.percentile(finite, [1, 50, 99])
    medians = tuple(float(m) for m in np.median(finite, axis=0)) if rgb else ()
    return ImageStatistics(channels, str(array.dtype), float(p1), float(p50), float(p99), medians,
                           pixel_size_nm)


def training_statistics(images: Iterable[np.ndarray], *, rgb: bool, pixel_size_nm: float | None = None,
                        source: str = "") -> dict:
    """The card entry for a training split: channels, dtype, the median over images of each percentile, the
    spread of the images' median positions (min, p5, p50, p95, max), per-channel medians, pixel size, source."""
    stats = [image_statistics(image, rgb=rgb) for image in images]
    if not stats:
        raise ValueError("training_statistics: no images")
    positions = np.array([s.median_position for s in stats])
    entry = {"channels": stats[0].channels, "dtype": stats[0].dtype, "images": len(stats),
             "percentiles": {name: round(float(np.median([getattr(s, name) for s in stats])), 3)
                             for name in ("p1", "p50", "p99")},
             "median_position": {name: round(float(value), 4) for name, value in
                                 zip(("min", "p5", "p50", "p95", "max"),
                                     np.percentile(positions, [0, 5, 50, 95, 100]), strict=True)},
             "pixel_size_nm": pixel_size_nm, "source": source}
    if rgb:
        entry["channel_medians"] = [round(float(np.median([s.channel_medians[c] for s in stats])), 2)
                                    for c in range(stats[0].channels)]
    return entry


def assess(stats: ImageStatistics, meta: ModelMetadata) -> list[str]:
    """What makes the image look unlike the model's training data (empty: nothing found)."""
    found = []
    trained = meta.card.get(STATS_KEY) or {}
    model_channels = int(trained.get("channels", meta.in_channels))
    if stats.channels >= 3 and model_channels == 1:
        found.append("the image is in colour but the model was trained on gray images (it would see only the "
                     "image's brightness)")
    elif stats.channels == 1 and model_channels >= 3:
        found.append("the image is gray but the model was trained on colour images")
    colours = trained.get("channel_medians") if stats.channel_medians and model_channels >= 3 else None
    if colours and _colour_distance(stats.channel_medians, colours) > COLOUR_LIMIT:
        found.append(f"its colours are unlike the training images' ({_shares(stats.channel_medians)} of red, green, "
                     f"blue; {_shares(colours)} in training)")
    spread = trained.get("median_position")
    position = stats.median_position
    if spread and not spread["p5"] - POSITION_MARGIN <= position <= spread["p95"] + POSITION_MARGIN:
        found.append(f"its intensities are unlike the training images' (the median sits at {position:.0%} of the "
                     f"1-99 % range; {spread['p5']:.0%}-{spread['p95']:.0%} in training)")
    trained_px = trained.get("pixel_size_nm")
    if trained_px and stats.pixel_size_nm:
        ratio = stats.pixel_size_nm / float(trained_px)
        if not 1 / PIXEL_SIZE_FACTOR <= ratio <= PIXEL_SIZE_FACTOR:
            found.append(f"its pixel size ({_nm(stats.pixel_size_nm)}) is far from the training data's "
                         f"({_nm(float(trained_px))})")
    return found


def suggest(stats: ImageStatistics, models: Mapping[str, ModelMetadata], *, besides: str | None = None) -> str | None:
    """The model (other than ``besides``) the image suits best: no differences found, then the closest median
    position and colour balance to its training data; ``None`` when none suits it."""
    scored = []
    for name, meta in models.items():
        trained = meta.card.get(STATS_KEY)
        if name == besides or not trained or assess(stats, meta):
            continue
        distance = abs(stats.median_position - trained["median_position"]["p50"])
        if stats.channel_medians and trained.get("channel_medians"):
            distance += _colour_distance(stats.channel_medians, trained["channel_medians"])
        scored.append((distance, name))
    return min(scored)[1] if scored else None


def advice(model: str, problems: list[str], suggestion: str | None) -> str:
    """One sentence for the dock: what differs, and what to do."""
    remedy = (f"try the model '{suggestion}', or fine-tune '{model}' on a few annotated slices" if suggestion else
              f"fine-tune '{model}' on a few annotated slices (Fine-tune dock) or load a model trained on such data")
    return f"This image looks unlike what '{model}' was trained on: {'; '.join(problems)}. Results may be poor; " \
           f"{remedy}."


def _balance(medians) -> np.ndarray:
    values = np.asarray(medians, dtype=np.float64)[:3]
    return values / values.sum() if values.sum() > 0 else np.full(values.shape, 1 / len(values))


def _colour_distance(a, b) -> float:
    return float(np.abs(_balance(a) - _balance(b)).sum())


def _shares(medians) -> str:
    return "/".join(f"{share:.0%}" for share in _balance(medians))


def _nm(value: float) -> str:
    return f"{value / 1000:.3g} µm" if value >= 1000 else f"{value:.3g} nm"
