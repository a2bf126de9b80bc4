"""What a volume run computes: its ``Settings`` (one frozen dataclass, checked, sent to every task)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...io.volumes import (
    Volume,
)
from ..inference import check_channels
from ..instances3d import (
    MODES,
    halo_voxels,
    voxel_sampling,
)
from ..segmenter import Segmenter
from ..tiling import DEFAULT_TILE, check_overlap, check_tile

PROBABILITY_DTYPES = ("uint8", "float16", "float32")
#: The most two fp32 runs' probabilities differ when their blocks ran with other torch thread counts or batch
#: compositions (measured 1.8e-7 and 1.05e-5 on an AVX2 CPU; docs/volumes.md). Equal settings: equal bits.
FP32_TOLERANCE = 1e-4


#: Default context of the blockwise watershed, in voxels of the finest axis (``watershed_halo``).
WATERSHED_HALO = 16


@dataclass(frozen=True)
class Settings:
    """What every task needs besides the data (picklable)."""

    threshold: float
    objects: str
    instances: str | None
    probabilities: str | None
    tile: int | None
    overlap: int
    tta: bool
    batch_size: int
    rgb: bool
    ndim: int
    min_size: int
    threads: int | None = None
    watershed: bool = False
    #: Voxels of context per (z, y, x) axis of each block's watershed, and the voxel size relative to the finest axis.
    watershed_halo: tuple[int, int, int] = (0, 0, 0)
    watershed_sampling: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def context_tile(self) -> int:
        return self.tile or DEFAULT_TILE

    @property
    def transforms(self) -> int:
        return 8 if self.tta else 1


def _settings(segmenter: Segmenter, volume: Volume, *, threshold, instances, probabilities, prob_dtype, tile,
              overlap, tta, batch_size, min_size) -> Settings:
    if instances not in (None, *MODES):
        raise ValueError(f"instances must be None, '2d' or '3d', got {instances!r}")
    if prob_dtype not in PROBABILITY_DTYPES:
        raise ValueError(f"prob_dtype must be one of {PROBABILITY_DTYPES}, got {prob_dtype!r}")
    if tile is not None:
        check_tile(tile, overlap)
    check_overlap(tile or DEFAULT_TILE, overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_channels(segmenter.metadata, volume.rgb, volume.data.shape)
    return Settings(float(segmenter.threshold if threshold is None else threshold), segmenter.metadata.objects,
                    instances, prob_dtype if probabilities else None, tile, overlap, bool(tta), int(batch_size),
                    volume.rgb, volume.ndim, int(min_size))


def _watershed_settings(settings: Settings, volume: Volume, watershed: bool, halo: int) -> Settings:
    """``settings`` with the watershed split: its halo in voxels per axis from ``halo`` voxels of the finest axis
    and the volume's voxel size (``instances3d.voxel_sampling``: isotropic without a usable scale)."""
    if not watershed:
        raise ValueError("watershed_halo is the context of the watershed split: give it with watershed=True")
    if not settings.instances:
        raise ValueError("the watershed splits instances: give instances='2d' or '3d' with it")
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)):
        raise ValueError(f"watershed_halo must be a whole number of voxels, got {halo!r}")
    sampling = voxel_sampling(volume.geometry.scale, volume.geometry.units)
    return replace(settings, watershed=True, watershed_halo=halo_voxels(sampling, int(halo), settings.instances),
                   watershed_sampling=sampling)


def _check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1 (torch threads per block task), got {threads!r}")
    return int(threads)
