"""Results of volume runs: estimates before a run, marking and finding unfinished runs, saving and re-thresholding.

Qt-free, so the CLI and the docks share them: ``estimate`` (blocks and minutes, from a ``Speeds`` record of the
rates measured so far), ``mark_store`` / ``unfinished_run`` (which layer and region a labels store is made from, to
continue it later), ``save_job`` (copy a finished result, re-thresholded and with painted corrections drawn in).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ...io.atomic import move_into_place, staging_directory
from ...io.volumes import RECORD_KEY, VolumeError, record_of
from ...model.metadata import ModelMetadata
from ..corrections import Corrections
from ..progress import Job, Progress
from ..tiling import WHOLE_IMAGE_PIXELS
from .plan import BlockPlan, can_cut, plan_blocks
from .stores import prob_path

#: Seconds per megapixel before a rate is measured (fused AL-Net, fp32: 89 ms per 512 x 512 on two free CPU cores,
#: docs/architecture.md; CUDA: a rough figure for a mid-range GPU).
DEFAULT_SECONDS_PER_MPX = {"cpu": 0.34, "cuda": 0.01, "mps": 0.05}
#: Runs estimated above this many minutes are announced (blocks, minutes, how to stop and resume) when started.
LONG_RUN_MINUTES = 5.0
#: The attribute of a labels store that names the layer and region it was made from (so a later session can
#: continue an unfinished run into the same output).
LAYER_KEY = "napari_alnet_layer"


# --- estimates ----------------------------------------------------------------------------------------------------

@dataclass
class Speeds:
    """Seconds per megapixel measured per device kind ('cpu', 'cuda', ...) by the runs of one owner (a dock)."""

    measured: dict[str, float] = field(default_factory=dict)

    def record(self, device: str, slices_per_s: float, plane_pixels: int) -> None:
        """Remember the speed of a run on ``device`` (from its progress) for later estimates."""
        if slices_per_s > 0 and plane_pixels > 0:
            self.measured[_kind(device)] = 1e6 / (slices_per_s * plane_pixels)

    def rate(self, device: str) -> tuple[float, str]:
        """Seconds per megapixel on ``device`` and where the figure comes from."""
        kind = _kind(device)
        if kind in self.measured:
            return self.measured[kind], "measured in this session"
        rate = DEFAULT_SECONDS_PER_MPX.get(kind, DEFAULT_SECONDS_PER_MPX["cpu"])
        return rate, ("typical speed of two free cores; measured after the first run" if kind == "cpu"
                      else "typical speed")


def _kind(device: str) -> str:
    return str(device).split(":")[0]


@dataclass(frozen=True)
class Estimate:
    """Blocks and minutes a run will take (``rate_source``: where the speed comes from)."""

    plan: BlockPlan
    minutes: float
    device: str
    rate_source: str

    def describe(self) -> str:
        block = " x ".join(map(str, self.plan.block))
        voxels = int(np.prod(self.plan.shape, dtype=np.int64))
        minutes = f"{self.minutes:.0f} min" if self.minutes >= 1 else f"{max(self.minutes * 60, 1):.0f} s"
        return (f"{len(self.plan):,} block{'s' * (len(self.plan) != 1)} of {block} ({voxels / 1e6:,.0f} M voxels): "
                f"about {minutes} on {self.device} ({self.rate_source})")


def estimate(shape: tuple[int, ...], chunks: tuple[int, ...] | None, meta: ModelMetadata, device: str, *,
             speeds: Speeds | None = None, whole_pixels: int = WHOLE_IMAGE_PIXELS) -> Estimate:
    """The block plan and the expected minutes of segmenting a (Y, X) or (Z, Y, X) region on ``device``, at the
    rate ``speeds`` measured (else a typical one)."""
    zyx = tuple(int(s) for s in ((1, *shape) if len(shape) == 2 else shape))
    ch = tuple(int(c) for c in ((1, *chunks) if chunks is not None and len(chunks) == 2 else chunks or zyx))
    plan = plan_blocks(zyx, chunks=ch, whole_pixels=whole_pixels, can_cut=can_cut(meta, zyx))
    rate, source = (speeds or Speeds()).rate(device)
    context = 1.4 if plan.cuts_planes else 1.0  # the per-slice context pass and the halos
    minutes = int(np.prod(zyx, dtype=np.int64)) / 1e6 * rate * context / 60
    return Estimate(plan, minutes, str(device), source)


# --- unfinished runs ----------------------------------------------------------------------------------------------

def mark_store(labels: Path, marker: dict[str, Any]) -> None:
    """Record in the labels store what it is made from (see ``unfinished_run``)."""
    zarr.open_group(zarr.storage.LocalStore(labels), mode="r+").attrs[LAYER_KEY] = marker


def unfinished_run(labels: Path, marker: dict[str, Any]) -> dict[str, Any] | None:
    """The record of an unfinished run made from ``marker`` in the labels store ``labels`` (one we made), else
    ``None``."""
    try:
        group = zarr.open_group(zarr.storage.LocalStore(labels, read_only=True), mode="r")
    except Exception:  # not a Zarr group: the caller refuses to touch it
        return None
    record = record_of(group)
    if record is None or record.get("complete") or group.attrs.get(LAYER_KEY) != marker:
        return None
    return record


# --- saving -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Drawn:
    """Painted corrections to draw into a saved labels store: ``corrections`` over the shown array, whose
    ``singletons`` axes the store lacks and which lacks the store's ``lead`` leading axes of one."""

    corrections: Corrections
    singletons: tuple[int, ...] = ()
    lead: int = 0


def save_job(labels: Path, dest: Path, threshold: float, *, semantic: bool,
             drawn: Drawn | None = None) -> Job[Path]:
    """Copy a finished result (labels store and its probability store) to ``dest`` / its ``_prob`` sibling, each
    published only once complete; a semantic result at another threshold than its run's is re-thresholded from the
    probabilities, chunk by chunk, on the way, and the corrections ``drawn`` are drawn into the copy. The checks
    happen at once (``VolumeError``: an existing target, an unfinished result); the copying when the job runs.
    Refuses to write over anything."""
    targets = [(labels, dest), (prob_path(labels), prob_path(dest))]
    for _, target in targets:
        if target.exists():
            raise VolumeError(f"{target} exists; choose another name to save the result (nothing was written)")
    record = record_of(zarr.open_group(zarr.storage.LocalStore(labels), mode="r")) or {}
    if not record.get("complete"):
        raise VolumeError(f"{labels}: the result is not complete; press Segment to finish it, then save")
    run = record.get("run", {}).get("settings", {})
    redo = semantic and abs(float(run.get("threshold", threshold)) - threshold) > 1e-9
    return _save(targets, dest, threshold, record, redo, drawn)


def _save(targets: list[tuple[Path, Path]], dest: Path, threshold: float, record: dict, redo: bool,
          drawn: Drawn | None) -> Job[Path]:
    total = 2 + int(redo)
    with staging_directory(dest) as staging:
        copies = []
        for step, (source, target) in enumerate(targets, 1):
            copy = staging / target.name
            shutil.copytree(source, copy)
            copies.append((copy, target))
            yield Progress(step, total, f"copied {source.name}")
        if redo:
            yield from rethreshold_store(copies[0][0], copies[1][0], threshold, record)
        if drawn is not None and drawn.corrections:
            write_corrections(copies[0][0], drawn)
        for copy, target in copies:
            move_into_place(copy, target)
    yield Progress(total, total, f"saved {dest}")
    return dest


def write_corrections(labels: Path, drawn: Drawn) -> None:
    """Draw the corrections ``drawn`` into the labels store ``labels`` (a copy of the store they were painted
    over), tile by tile; the store records how many voxels were corrected."""
    group = zarr.open_group(zarr.storage.LocalStore(labels), mode="r+")
    out, record = group["0"], drawn.corrections
    for key in record.tiles():
        box = tuple(slice(k * t, min((k + 1) * t, n)) for k, t, n in zip(key, record.tile, record.shape, strict=True))
        inner = tuple(b for i, b in enumerate(box) if i not in drawn.singletons)
        region = (*(slice(0, 1) for _ in range(drawn.lead)), *inner)
        values = np.asarray(out[region])
        shaped = values.reshape([b.stop - b.start for b in box])
        record.draw(shaped, box)
        out[region] = shaped.reshape(values.shape)
    group.attrs["corrected_in_napari"] = {"voxels": record.voxels, "slices": record.slices()}


def rethreshold_store(labels: Path, prob: Path, threshold: float, record: dict) -> Job[None]:
    """Rewrite the semantic labels store ``labels`` from the probability store ``prob`` at ``threshold``, chunk by
    chunk, and record the new threshold in its run record."""
    group = zarr.open_group(zarr.storage.LocalStore(labels), mode="r+")
    out = group["0"]
    probs = zarr.open_array(zarr.storage.LocalStore(prob / "0"), mode="r")
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    grid = [range(0, n, c) for n, c in zip(out.shape, out.chunks, strict=True)]
    starts = list(np.ndindex(*[len(g) for g in grid]))
    for i, pos in enumerate(starts):
        region = tuple(slice(g[p], g[p] + c) for g, p, c in zip(grid, pos, out.chunks, strict=True))
        out[region] = (np.asarray(probs[region]) > threshold * scale).astype(np.uint8)
        if i % 16 == 0:
            yield Progress(2, 3, f"re-thresholding at {threshold:.2f}: chunk {i + 1}/{len(starts)}")
    run = dict(record.get("run", {}))
    run["settings"] = dict(run.get("settings", {})) | {"threshold": float(threshold)}
    group.attrs[RECORD_KEY] = record | {"run": run, "threshold_changed_in_napari": True}
