"""The Fine-tune dock's 'Slices' list, kept current with the chosen annotations layer (``AnnotatedSlices``).

A layer held in memory is scanned (debounced after painting); a big or lazy one is scanned once and then kept
current from its paint events, re-checking only the slices a stroke touched; a corrected Segment result's
annotated slices are its corrected ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer

from ..engine.volume.routing import IN_MEMORY_VOXELS
from ..training.finetune import annotated_slices
from ._corrections import corrections_of
from ._layers import base_data
from ._slices import painted_slices

if TYPE_CHECKING:  # the form is only read
    from ._finetune_form import FinetuneForm

#: Milliseconds between the last paint event and the scan of the annotations.
REFRESH_MS = 300


class AnnotatedSlices:
    """Watches ``form.annotations`` and fills ``form.slice_list`` with its annotated slices."""

    def __init__(self, form: FinetuneForm) -> None:
        self.form = form
        self._watched: Labels | None = None
        #: A big annotations layer and its annotated slices, kept current from its paint events.
        self._tracked: tuple[Labels, set[int]] | None = None
        self._recheck: set[int] = set()
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)
        form.annotations.changed.connect(self.watch)
        form.refresh_button.changed.connect(self.refresh_slices)

    def track_new(self, layer: Labels) -> None:
        """A new, empty annotations layer: when big, its slices come from paint events, never a scan."""
        if is_big(layer):
            self._tracked = (layer, set())

    def watch(self, *_) -> None:
        """Watch the chosen annotations layer (painting refreshes the slice list, debounced)."""
        layer = self.form.annotations.value
        if layer is not self._watched:
            for old in [self._watched] if self._watched is not None else []:
                old.events.data.disconnect(self._on_data)
                old.events.paint.disconnect(self._schedule)
                old.events.paint.disconnect(self._on_paint)
            if layer is not None:
                layer.events.data.connect(self._on_data)
                big = is_big(layer) and base_data(layer).ndim == 3
                layer.events.paint.connect(self._on_paint if big else self._schedule)
            self._watched = layer
            self.refresh()

    def refresh_slices(self, *_) -> None:
        """Re-detect the annotated slices (any nonzero pixel) of the chosen annotations layer."""
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """The slice list from a scan of the annotations; a big layer's list kept from its paint events is used
        as it is unless ``force``."""
        self._timer.stop()
        form = self.form
        layer = form.annotations.value
        data = base_data(layer) if layer is not None else None
        if data is None or data.ndim not in (2, 3):
            form.slice_list.set_slices([])
            form.reset_holdout()
            return
        corrected = corrections_of(layer)  # a Segment result layer: its corrected slices are the annotated ones
        if corrected is not None:
            form.slice_list.set_slices(corrected.slices(), data.shape[0] if data.ndim == 3 else 1)
            form.reset_holdout()
            return
        tracked = self._tracked[1] if self._tracked is not None and self._tracked[0] is layer else None
        if tracked is None or force:
            found = annotated_slices(data) if isinstance(data, np.ndarray) else lazy_annotated_slices(data)
            tracked = set(found)
            if is_big(layer) and data.ndim == 3:
                self._tracked = (layer, tracked)
        form.slice_list.set_slices(sorted(tracked), data.shape[0] if data.ndim == 3 else 1)
        form.reset_holdout()

    def _on_data(self, *_) -> None:
        """The annotations' data was replaced: forget what paint events said, scan again (debounced)."""
        self._tracked = None
        self._schedule()

    def _schedule(self, *_) -> None:
        self._timer.start()

    def _on_paint(self, event) -> None:
        """A stroke on a big annotations layer: re-check only the slices it touched (no scan of the volume)."""
        layer = self.form.annotations.value
        if self._tracked is None or self._tracked[0] is not layer:
            self._schedule()
            return
        data, found = base_data(layer), self._tracked[1]
        for atom in event.value or []:
            zs = painted_slices(atom, data.shape[0])
            if zs is None:  # an edit we cannot place: scan once more
                self._tracked = None
                self._schedule()
                return
            if np.any(np.asarray(atom[-1]) != 0):  # painted a label: these slices are annotated
                found.update(zs)
            else:  # erased: napari may write after telling, so look once the event has been handled
                self._recheck.update(zs)
                QTimer.singleShot(0, self._recheck_slices)
        self.refresh()

    def _recheck_slices(self) -> None:
        layer = self.form.annotations.value
        if self._tracked is not None and self._tracked[0] is layer:
            data, found = base_data(layer), self._tracked[1]
            for z in sorted(self._recheck):
                (found.add if np.any(data[z]) else found.discard)(z)
            self.refresh()
        self._recheck.clear()


def is_big(layer: Image | Labels) -> bool:
    """A layer not held as one NumPy array, or one bigger than the in-memory budget: read slice by slice."""
    data = base_data(layer)
    return not isinstance(data, np.ndarray) or data.size > IN_MEMORY_VOXELS


def lazy_annotated_slices(data) -> list[int]:
    """``annotated_slices`` of a dask / Zarr / array-like (Z, Y, X) or (Y, X) labels array, read chunk by chunk."""
    array = data if isinstance(data, da.Array) else da.from_array(data, chunks=_chunks(data), asarray=True)
    if array.ndim == 2:
        return [0] if bool(array.any().compute()) else []
    found = array.any(axis=(1, 2)).compute()
    return [int(z) for z in np.flatnonzero(found)]


def _chunks(data):
    chunks = getattr(data, "chunks", None)
    return tuple(int(c) for c in chunks) if isinstance(chunks, tuple) and len(chunks) == data.ndim else "auto"
