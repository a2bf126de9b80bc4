"""Big layers in the Segment dock: Zarr-backed result views, the dock's session of temporary stores.

A layer too big for the in-memory path is segmented by the blockwise engine (``engine.volume``) in the worker
(``engine.request.SegmentRequest.region_source`` gives it the chosen region unread), the engine writes labels and
probabilities into OME-Zarr stores, and the output layers show them through ``StoreView``: an array-like that reads
only what napari asks for (the displayed slice), so a result of any size fills in as blocks finish and re-thresholding
reads one plane. (Not a dask array: napari's opportunistic dask cache would keep serving chunks read before the store
was written.) Estimates, saving and re-thresholding are the engine's (``engine.volume.results``); ``VolumeSession``
holds what a dock measured and its temporary stores.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from napari.layers import Image

from ..engine.corrections import Corrections
from ..engine.volume.results import Drawn, Estimate, Speeds, estimate
from ..model.metadata import ModelMetadata
from ._layers import Region, spatial_shape


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


# --- estimates and temporary stores ------------------------------------------------------------------------

class VolumeSession:
    """What one Segment dock keeps across its blockwise runs (no module state): the speeds it measured (for its
    estimates) and a folder of temporary result stores, removed by ``cleanup``: when the dock is destroyed and no
    layer shows a store in it (``close_with``), else when Python exits (napari quits)."""

    def __init__(self) -> None:
        self.speeds = Speeds()
        self._folder: Path | None = None

    def folder(self) -> Path:
        """The folder of temporary result stores (made on first use)."""
        if self._folder is None or not self._folder.is_dir():
            self._folder = Path(tempfile.mkdtemp(prefix="napari-alnet-"))
            # when Python exits at the latest (not when this object goes: layers may still show the stores)
            atexit.register(shutil.rmtree, self._folder, True)
        return self._folder

    def temporary_store(self, name: str) -> Path:
        """A new path ``<folder>/<name>-N.zarr`` for a temporary labels store."""
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "result"
        folder = self.folder()
        n = 1
        while (folder / f"{stem}-{n}.zarr").exists() or (folder / f"{stem}-{n}_prob.zarr").exists():
            n += 1
        return folder / f"{stem}-{n}.zarr"

    def estimate(self, shape: tuple[int, ...], chunks: tuple[int, ...] | None, meta: ModelMetadata,
                 device: str) -> Estimate:
        """``engine.volume.results.estimate`` at the speed this dock measured."""
        return estimate(shape, chunks, meta, device, speeds=self.speeds)

    def record_rate(self, device: str, slices_per_s: float, plane_pixels: int) -> None:
        """Remember a run's speed on ``device`` (from its progress) for later estimates."""
        self.speeds.record(device, slices_per_s, plane_pixels)

    def cleanup(self) -> None:
        """Remove the temporary stores now."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def close_with(self, widget: Any, in_use: Callable[[Path], bool]) -> None:
        """Clean up when the Qt ``widget`` (the dock's) is destroyed, unless ``in_use(folder)`` then (a layer still
        shows one of its stores: they stay until Python exits)."""
        widget.destroyed.connect(lambda *_: self._folder is None or in_use(self._folder) or self.cleanup())


def shows_store_in(layers: Any, folder: Path) -> bool:
    """Whether one of ``layers`` shows a result store inside ``folder``."""
    try:
        return any(isinstance(layer.data, StoreView) and folder in layer.data.path.parents for layer in layers)
    except RuntimeError:  # the layer list's Qt side is gone (napari closing): nothing shows them any more
        return False


def drawn_corrections(view: CorrectedView | None) -> Drawn | None:
    """What the engine draws into a saved copy of the store ``view`` shows (``engine.volume.results.save_job``)."""
    if view is None:
        return None
    return Drawn(view.corrections, view.placement.singletons, len(view.lead))


def source_chunks(source: Any) -> tuple[int, ...] | None:
    """The spatial chunks of a lazy source (``None``: one NumPy array)."""
    chunks = getattr(source, "chunks", None)
    if isinstance(source, da.Array):
        return tuple(c[0] for c in source.chunks)
    return tuple(int(c) for c in chunks) if isinstance(chunks, tuple) else None


# --- where results go ---------------------------------------------------------------------------------------------

def output_store(value: Any) -> Path | None:
    """The labels store chosen in 'Output' (``None``: a temporary one); ``.zarr`` is added when missing."""
    if value is None or str(value) in ("", "."):
        return None
    path = Path(value).expanduser()
    if not path.name.lower().endswith(".zarr"):
        path = path.with_name(path.name + ".zarr")
    return path


def layer_marker(layer: Image, region: Region) -> dict[str, Any]:
    """What identifies a run's input across sessions: the layer's name, file (when napari read it from one),
    spatial shape, and the region."""
    shape = spatial_shape(layer)
    path = getattr(getattr(layer, "source", None), "path", None)
    where = [int(r) if not isinstance(r, slice) else list(r.indices(n)[:2]) for r, n in zip(region, shape,
                                                                                             strict=True)]
    return {"layer": layer.name, "file": str(path) if path else None, "shape": list(shape), "region": where}


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
