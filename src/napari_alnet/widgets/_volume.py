"""Big layers in the Segment dock: lazy sources, Zarr-backed result views, estimates, temporary stores, saving.

A layer too big for the in-memory path is segmented by the blockwise engine (``engine.volume``) in the
worker: ``lazy_source`` gives the engine the chosen region of the layer's level-0 data without reading it (a NumPy
view, or a dask array over dask / Zarr / other array-like data), the engine writes labels and probabilities into
OME-Zarr stores, and the output layers show them through ``StoreView``: an array-like that reads only what napari
asks for (the displayed slice), so a result of any size fills in as blocks finish and re-thresholding reads one
plane. (Not a dask array: napari's opportunistic dask cache would keep serving chunks read before the store was
written.)
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from napari.layers import Image

from ..engine.corrections import Corrections
from ..engine.progress import Job, Progress
from ..engine.tiling import WHOLE_IMAGE_PIXELS
from ..engine.volume import BlockPlan, plan_blocks
from ..io.atomic import move_into_place, staging_directory
from ..io.volumes import RECORD_KEY, VolumeError, record_of
from ..model.metadata import ModelMetadata
from ._layers import Region, base_data, spatial_shape

#: Seconds per megapixel before this session has measured its own rate (fused AL-Net, fp32: 89 ms per 512 x 512
#: on two free CPU cores, docs/architecture.md; CUDA: a rough figure for a mid-range GPU).
DEFAULT_SECONDS_PER_MPX = {"cpu": 0.34, "cuda": 0.01, "mps": 0.05}
#: Runs estimated above this many minutes are announced (blocks, minutes, how to stop and resume) when started.
LONG_RUN_MINUTES = 5.0

_measured: dict[str, float] = {}
_session_folder: Path | None = None


# --- the engine's source ------------------------------------------------------------------------------------------

def lazy_source(layer: Image, region: Region) -> Any:
    """The part ``region`` of ``layer``'s level-0 data, unread: a NumPy view, or a dask array (dask data as is;
    Zarr and other array-likes wrapped chunk by chunk)."""
    data = base_data(layer)
    if not isinstance(data, (np.ndarray, da.Array)):
        chunks = getattr(data, "chunks", None)
        chunks = tuple(int(c) for c in chunks) if isinstance(chunks, tuple) and len(chunks) == data.ndim else "auto"
        data = da.from_array(data, chunks=chunks, asarray=True, fancy=False)
    part = data[region]
    # always (Z, Y, X[, C]) for the engine: a single plane gets a Z of one (so a colour axis is never read as X)
    return part[None] if Placement.of(layer, region).extra_z else part


@dataclass(frozen=True)
class Placement:
    """Where a region's result sits in the layer's space: ``singletons`` are the layer's axes fixed by the
    region (kept as length-1 axes of the output layer), ``origin`` the region's first voxel per axis."""

    singletons: tuple[int, ...]
    origin: tuple[int, ...]
    ndim: int

    @classmethod
    def of(cls, layer: Image, region: Region) -> Placement:
        shape = spatial_shape(layer)
        single = tuple(i for i, r in enumerate(region) if not isinstance(r, slice))
        origin = tuple(int(r) if not isinstance(r, slice) else r.indices(n)[0]
                       for r, n in zip(region, shape, strict=True))
        return cls(single, origin, len(shape))

    @property
    def extra_z(self) -> bool:
        """Whether the region is one plane, which the engine gets (and stores) with a leading Z of one."""
        return self.ndim - len(self.singletons) == 2

    def translate(self, layer: Image) -> np.ndarray:
        """The output layer's translate: the layer's, moved to the region's first voxel."""
        return np.asarray(layer.translate, float) + np.asarray(self.origin, float) * np.asarray(layer.scale, float)


# --- views of the result stores -----------------------------------------------------------------------------------

class StoreView:
    """A read-on-demand array over a result store's array ``0`` with the ``placement``'s length-1 axes added.

    ``threshold`` (probability stores): ``uint8`` 0/1 where probability > threshold (uint8 stores hold 255 p);
    ``None``: the stored values. ``voxels_read`` counts what was read (tests and benchmarks check that napari reads
    the displayed slice, never the volume).
    """

    def __init__(self, path: Path, placement: Placement, threshold: float | None = None) -> None:
        self.path = Path(path)
        self.array = zarr.open_array(zarr.storage.LocalStore(self.path / "0", read_only=True), mode="r")
        self.placement = placement
        self.threshold = threshold
        self.scale = 255.0 if self.array.dtype == np.uint8 and threshold is not None else 1.0
        self.voxels_read = 0
        self.whole_reads = 0
        self.lead = (0,) if placement.extra_z else ()  # the store's Z of one, not an axis of the layer
        shape = list(self.array.shape[len(self.lead):])
        for axis in placement.singletons:
            shape.insert(axis, 1)
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8) if threshold is not None else self.array.dtype

    def reopen(self) -> None:
        """Read the array's metadata again (the engine may widen the dtype of instance ids when it merges)."""
        self.array = zarr.open_array(zarr.storage.LocalStore(self.path / "0", read_only=True), mode="r")
        if self.threshold is None:
            self.dtype = self.array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = _expand(key, self.ndim)
        inner = tuple(k for i, k in enumerate(key) if i not in self.placement.singletons)
        for i in self.placement.singletons:
            if isinstance(key[i], slice) and not range(*key[i].indices(1)):
                inner = None
        values = np.asarray(self.array[(*self.lead, *inner)]) if inner is not None else None
        if values is None:
            sizes = [len(range(*k.indices(n))) for k, n in zip(key, self.shape, strict=True) if isinstance(k, slice)]
            return np.zeros(sizes, self.dtype)
        self.voxels_read += values.size
        kept = [i for i, k in enumerate(key) if isinstance(k, slice)]
        for i in self.placement.singletons:
            if i in kept:
                values = np.expand_dims(values, kept.index(i))
        if self.threshold is not None:
            values = (values > self.threshold * self.scale).astype(np.uint8)
        return values

    def __setitem__(self, key, value) -> None:
        raise ValueError(f"this layer shows the result store {self.path} (read-only); to correct labels, paint in a "
                         "new Labels layer")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        self.whole_reads += 1
        out = self[(slice(None),) * self.ndim]
        return out.astype(dtype) if dtype is not None else out


class CorrectedView(StoreView):
    """A ``StoreView`` a user can paint on: what is written is kept in ``corrections`` (``engine.corrections``,
    one tile per store chunk) and drawn over the store's labels on every read, so a new threshold (a new view
    sharing the record), a resumed run filling in more blocks, or a repeated run keeps every painted voxel; the
    store itself is never written."""

    def __init__(self, path: Path, placement: Placement, threshold: float | None = None, *,
                 corrections: Corrections | None = None) -> None:
        super().__init__(path, placement, threshold)
        if corrections is None or corrections.shape != self.shape:
            chunks = list(self.array.chunks[len(self.lead):])
            for axis in placement.singletons:
                chunks.insert(axis, 1)
            corrections = Corrections(self.shape, tile=chunks)
        self.corrections = corrections

    def network(self, key) -> np.ndarray:
        """The store's labels at ``key`` (slices and integers), without the corrections."""
        return super().__getitem__(key)

    def __getitem__(self, key) -> np.ndarray:
        if _is_fancy(key):
            region, local = _fancy_box(key)
            return self[region][local]
        values = np.array(super().__getitem__(key))
        return self.corrections.draw(values, _expand(key, self.ndim))

    def __setitem__(self, key, value) -> None:
        if _is_fancy(key):
            region, local = _fancy_box(key)
            shown = self[region]
            shown[local] = value
            key, value = region, shown
        key = _expand(key, self.ndim)
        network = super().__getitem__(key)
        shown = np.broadcast_to(np.asarray(value, network.dtype), network.shape)
        self.corrections.reconcile(key, shown, network)


def _is_fancy(key) -> bool:
    return isinstance(key, tuple) and any(isinstance(k, np.ndarray) and k.ndim > 0 for k in key)


def _fancy_box(key: tuple) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]]:
    """The bounding box of a tuple of coordinate arrays (napari's ``data_setitem``) and the coordinates in it."""
    coords = [np.asarray(k, np.int64).ravel() for k in key]
    starts = [int(c.min()) if c.size else 0 for c in coords]
    region = tuple(slice(a, int(c.max()) + 1 if c.size else a) for a, c in zip(starts, coords, strict=True))
    return region, tuple(c - a for c, a in zip(coords, starts, strict=True))


def _expand(key, ndim: int) -> tuple:
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (ndim - len(key))
    out = []
    for k in key:
        if isinstance(k, slice):
            out.append(k)
        elif isinstance(k, (int, np.integer)):
            out.append(int(k))
        else:
            raise TypeError(f"a result view is read by slices and integers, not {type(k).__name__}")
    return tuple(out)


# --- estimates ----------------------------------------------------------------------------------------------------

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


def estimate(shape: tuple[int, ...], chunks: tuple[int, ...] | None, meta: ModelMetadata, device: str,
             whole_pixels: int = WHOLE_IMAGE_PIXELS) -> Estimate:
    """The block plan and the expected minutes of segmenting a (Y, X) or (Z, Y, X) region on ``device``."""
    zyx = tuple(int(s) for s in ((1, *shape) if len(shape) == 2 else shape))
    ch = tuple(int(c) for c in ((1, *chunks) if chunks is not None and len(chunks) == 2 else chunks or zyx))
    can_cut = meta.network_shape(zyx[1:]) == zyx[1:]
    plan = plan_blocks(zyx, chunks=ch, whole_pixels=whole_pixels, can_cut=can_cut)
    kind = str(device).split(":")[0]
    if kind in _measured:
        rate, source = _measured[kind], "measured in this session"
    else:
        rate = DEFAULT_SECONDS_PER_MPX.get(kind, DEFAULT_SECONDS_PER_MPX["cpu"])
        source = "typical speed of two free cores; measured after the first run" if kind == "cpu" else "typical speed"
    context = 1.4 if plan.cuts_planes else 1.0  # the per-slice context pass and the halos
    minutes = int(np.prod(zyx, dtype=np.int64)) / 1e6 * rate * context / 60
    return Estimate(plan, minutes, str(device), source)


def record_rate(device: str, slices_per_s: float, plane_pixels: int) -> None:
    """Remember this session's speed on ``device`` (from a run's progress) for later estimates."""
    if slices_per_s > 0 and plane_pixels > 0:
        _measured[str(device).split(":")[0]] = 1e6 / (slices_per_s * plane_pixels)


def source_chunks(source: Any) -> tuple[int, ...] | None:
    """The spatial chunks of a lazy source (``None``: one NumPy array)."""
    chunks = getattr(source, "chunks", None)
    if isinstance(source, da.Array):
        return tuple(c[0] for c in source.chunks)
    return tuple(int(c) for c in chunks) if isinstance(chunks, tuple) else None


# --- where results go ---------------------------------------------------------------------------------------------

def session_folder() -> Path:
    """This session's folder for temporary result stores (removed when napari quits)."""
    global _session_folder
    if _session_folder is None or not _session_folder.is_dir():
        _session_folder = Path(tempfile.mkdtemp(prefix="napari-alnet-"))
        atexit.register(shutil.rmtree, _session_folder, True)
    return _session_folder


def temporary_store(name: str) -> Path:
    """A new path ``<session folder>/<name>-N.zarr`` for a temporary labels store."""
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "result"
    folder = session_folder()
    n = 1
    while (folder / f"{stem}-{n}.zarr").exists() or (folder / f"{stem}-{n}_prob.zarr").exists():
        n += 1
    return folder / f"{stem}-{n}.zarr"


def prob_path(labels: Path) -> Path:
    """The probability store the engine writes beside a labels store ``X.zarr`` (``X_prob.zarr``)."""
    stem = labels.name[: -len(".zarr")]
    stem = stem[: -len("_labels")] if stem.endswith("_labels") else stem
    return labels.with_name(f"{stem}_prob.zarr")


def output_store(value: Any) -> Path | None:
    """The labels store chosen in 'Output' (``None``: a temporary one); ``.zarr`` is added when missing."""
    if value is None or str(value) in ("", "."):
        return None
    path = Path(value).expanduser()
    if not path.name.lower().endswith(".zarr"):
        path = path.with_name(path.name + ".zarr")
    return path


#: The attribute of a labels store that names the layer and region it was made from (so a later session can
#: continue an unfinished run into the same 'Output').
LAYER_KEY = "napari_alnet_layer"


def layer_marker(layer: Image, region: Region) -> dict[str, Any]:
    """What identifies a run's input across sessions: the layer's name, file (when napari read it from one),
    spatial shape, and the region."""
    shape = spatial_shape(layer)
    path = getattr(getattr(layer, "source", None), "path", None)
    where = [int(r) if not isinstance(r, slice) else list(r.indices(n)[:2]) for r, n in zip(region, shape,
                                                                                             strict=True)]
    return {"layer": layer.name, "file": str(path) if path else None, "shape": list(shape), "region": where}


def unfinished_run(labels: Path, marker: dict[str, Any]) -> dict[str, Any] | None:
    """The record of an unfinished run of the same layer and region in the labels store ``labels`` (one we
    made), else ``None``."""
    try:
        group = zarr.open_group(zarr.storage.LocalStore(labels, read_only=True), mode="r")
    except Exception:  # not a Zarr group: the caller refuses to touch it
        return None
    record = record_of(group)
    if record is None or record.get("complete") or group.attrs.get(LAYER_KEY) != marker:
        return None
    return record


def mark_store(labels: Path, marker: dict[str, Any]) -> None:
    """Record in the labels store which layer and region it is made from (see ``unfinished_run``)."""
    zarr.open_group(zarr.storage.LocalStore(labels), mode="r+").attrs[LAYER_KEY] = marker


@dataclass
class Pending:
    """A run that stopped before the end: Segment again with the same layer, region and options resumes it."""

    layer: Image
    region: Region
    key: tuple
    labels: Path
    threshold: float
    started: float = field(default_factory=time.time)

    def matches(self, layer: Image, region: Region, key: tuple) -> bool:
        return self.layer is layer and self.region == region and self.key == key and self.labels.exists()


# --- saving -------------------------------------------------------------------------------------------------------

def save_job(labels: Path, dest: Path, threshold: float, *, semantic: bool,
             corrected: CorrectedView | None = None) -> Job[Path]:
    """Copy a finished result (labels store and its probability store) to ``dest`` / its ``_prob`` sibling, each
    published only once complete; a semantic result at another threshold than its run's is re-thresholded from the
    probabilities, chunk by chunk, on the way, and the corrections of ``corrected`` (the layer showing the labels
    store) are drawn into the copy. The checks happen at once (``VolumeError``: an existing target, an
    unfinished result); the copying when the job runs. Refuses to write over anything."""
    targets = [(labels, dest), (prob_path(labels), prob_path(dest))]
    for _, target in targets:
        if target.exists():
            raise VolumeError(f"{target} exists; choose another name to save the result (nothing was written)")
    record = record_of(zarr.open_group(zarr.storage.LocalStore(labels), mode="r")) or {}
    if not record.get("complete"):
        raise VolumeError(f"{labels}: the result is not complete; press Segment to finish it, then save")
    run = record.get("run", {}).get("settings", {})
    redo = semantic and abs(float(run.get("threshold", threshold)) - threshold) > 1e-9
    return _save(targets, dest, threshold, record, redo, corrected)


def _save(targets: list[tuple[Path, Path]], dest: Path, threshold: float, record: dict, redo: bool,
          corrected: CorrectedView | None) -> Job[Path]:
    total = 2 + int(redo)
    with staging_directory(dest) as staging:
        copies = []
        for step, (source, target) in enumerate(targets, 1):
            copy = staging / target.name
            shutil.copytree(source, copy)
            copies.append((copy, target))
            yield Progress(step, total, f"copied {source.name}")
        if redo:
            yield from _rethreshold_store(copies[0][0], copies[1][0], threshold, record)
        if corrected is not None and corrected.corrections:
            write_corrections(copies[0][0], corrected)
        for copy, target in copies:
            move_into_place(copy, target)
    yield Progress(total, total, f"saved {dest}")
    return dest


def write_corrections(labels: Path, view: CorrectedView) -> None:
    """Draw the corrections of ``view`` (a layer's view of a result) into the labels store ``labels`` (a copy of
    the store it shows), tile by tile; the store records how many voxels were corrected."""
    group = zarr.open_group(zarr.storage.LocalStore(labels), mode="r+")
    out, record = group["0"], view.corrections
    for key in record.tiles():
        box = tuple(slice(k * t, min((k + 1) * t, n)) for k, t, n in zip(key, record.tile, record.shape, strict=True))
        inner = tuple(b for i, b in enumerate(box) if i not in view.placement.singletons)
        region = (*(slice(0, 1) for _ in view.lead), *inner)
        values = np.asarray(out[region])
        shaped = values.reshape([b.stop - b.start for b in box])
        record.draw(shaped, box)
        out[region] = shaped.reshape(values.shape)
    group.attrs["corrected_in_napari"] = {"voxels": record.voxels, "slices": record.slices()}


def _rethreshold_store(labels: Path, prob: Path, threshold: float, record: dict) -> Job[None]:
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
