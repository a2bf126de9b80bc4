"""What a volume run computes: its ``Settings``, one frozen dataclass from the caller to every task.

The caller builds it (``Settings(instances="3d", probabilities="uint8")``, or ``Settings.of(**options)`` from the
keyword options of ``segment_volume_job``); it is checked when made, completed for the model and the volume
(``resolved``: the model's threshold and objects, the source's colour and dimensions, the watershed's halo per
axis), recorded with the outputs (``records.run_record``) and sent as is to every task (picklable).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ...io.volumes import Volume
from ..inference import check_channels
from ..instances3d import MODES, halo_voxels, voxel_sampling
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
    """What every block computes: ``threshold`` (``None``: the model's), ``instances`` (``None``, '2d', '3d'),
    ``probabilities`` (the probability store's dtype, ``None``: none), ``tile``, ``overlap``, ``tta``,
    ``batch_size``, ``min_size`` (instances), ``threads`` (torch threads per block task; ``None``: chosen where the
    run is placed), ``watershed`` (split touching instances) and ``watershed_halo`` (its context: voxels of the
    finest axis as given, voxels per (z, y, x) axis once ``resolved``). ``objects``, ``rgb``, ``ndim`` and
    ``watershed_sampling`` (the voxel size relative to the finest axis) are filled in by ``resolved``."""

    threshold: float | None = None
    instances: str | None = None
    probabilities: str | None = None
    tile: int | None = None
    overlap: int = 64
    tta: bool = False
    batch_size: int = 4
    min_size: int = 16
    threads: int | None = None
    watershed: bool = False
    watershed_halo: int | tuple[int, int, int] = WATERSHED_HALO
    objects: str = ""
    rgb: bool = False
    ndim: int = 3
    watershed_sampling: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.instances not in (None, *MODES):
            raise ValueError(f"instances must be None, '2d' or '3d', got {self.instances!r}")
        if self.probabilities is not None and self.probabilities not in PROBABILITY_DTYPES:
            raise ValueError(f"prob_dtype must be one of {PROBABILITY_DTYPES}, got {self.probabilities!r}")
        if self.tile is not None:
            check_tile(self.tile, self.overlap)
        check_overlap(self.tile or DEFAULT_TILE, self.overlap)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads is not None:
            check_threads(self.threads)

    @classmethod
    def of(cls, *, probabilities: bool = False, prob_dtype: str = "uint8", **options: Any) -> Settings:
        """Settings from keyword options: ``probabilities`` (whether to write them) in ``prob_dtype``, and any
        other field by name (``TypeError`` for a name that is none)."""
        if prob_dtype not in PROBABILITY_DTYPES:
            raise ValueError(f"prob_dtype must be one of {PROBABILITY_DTYPES}, got {prob_dtype!r}")
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown volume option(s): {', '.join(unknown)}")
        return cls(probabilities=prob_dtype if probabilities else None, **options)

    @property
    def context_tile(self) -> int:
        return self.tile or DEFAULT_TILE

    @property
    def transforms(self) -> int:
        return 8 if self.tta else 1

    def resolved(self, segmenter: Segmenter, volume: Volume) -> Settings:
        """These settings for ``segmenter`` on ``volume``: its threshold where none is given, its objects, the
        source's colour and dimensions, and the watershed's halo per axis (``ValueError`` where they do not fit)."""
        check_channels(segmenter.metadata, volume.rgb, volume.data.shape)
        out = replace(self, threshold=float(segmenter.threshold if self.threshold is None else self.threshold),
                      objects=segmenter.metadata.objects, rgb=volume.rgb, ndim=volume.ndim,
                      tta=bool(self.tta), batch_size=int(self.batch_size), min_size=int(self.min_size))
        if self.watershed or self.watershed_halo != WATERSHED_HALO:
            return out._with_watershed(volume)
        return replace(out, watershed_halo=(0, 0, 0))

    def _with_watershed(self, volume: Volume) -> Settings:
        """The watershed split's halo in voxels per axis, from voxels of the finest axis and the volume's voxel size
        (``instances3d.voxel_sampling``: isotropic without a usable scale)."""
        halo = self.watershed_halo
        if not self.watershed:
            raise ValueError("watershed_halo is the context of the watershed split: give it with watershed=True")
        if not self.instances:
            raise ValueError("the watershed splits instances: give instances='2d' or '3d' with it")
        if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)):
            raise ValueError(f"watershed_halo must be a whole number of voxels, got {halo!r}")
        sampling = voxel_sampling(volume.geometry.scale, volume.geometry.units)
        return replace(self, watershed_halo=halo_voxels(sampling, int(halo), self.instances),
                       watershed_sampling=sampling)


def check_threads(threads: Any) -> int:
    """``threads`` (torch threads per block task) as an int; ``ValueError`` unless a whole number >= 1."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1 (torch threads per block task), got {threads!r}")
    return int(threads)
