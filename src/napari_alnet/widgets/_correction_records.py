"""The corrections record of each result layer, kept current, and the writing of results over it.

An in-memory result layer has a ``Tracker``: a copy of the network's labels and an ``engine.corrections`` record
kept current from the layer's paint events (the touched slices are compared with the network's labels) and after
its undo/redo (the whole layer is compared; the layer's ``undo``/``redo`` are wrapped, they send no event).
Every time the network's labels are made again (``ResultLayers.upsert``: a new threshold, a re-segmented scope)
the record is drawn over them and only the layer's NumPy data is written, in place, so napari's undo history
stays. A Zarr-backed result is a ``CorrectedView`` holding its record itself (``_volume``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from weakref import WeakKeyDictionary, ref

import napari
import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer

from ..engine.corrections import (
    Corrections,
    delete_object,
    merge_objects,
    objects_at,
    renumber_above,
    split_object,
)
from ._layers import Region, upsert
from ._slices import painted_slices
from ._volume import CorrectedView, StoreView

_trackers: WeakKeyDictionary[Labels, Tracker] = WeakKeyDictionary()


def corrections_of(layer) -> Corrections | None:
    """The corrections record of a result layer (current: pending paint is taken in); ``None`` for other layers."""
    if isinstance(getattr(layer, "data", None), CorrectedView):
        return layer.data.corrections
    tracker = tracker_of(layer)
    if tracker is None:
        return None
    tracker.sync()
    return tracker.corrections


def corrected_view(layer) -> CorrectedView | None:
    """The paintable view of a Zarr-backed result layer (``None`` for other layers)."""
    data = getattr(layer, "data", None)
    return data if isinstance(data, CorrectedView) else None


def tracker_of(layer) -> Tracker | None:
    """The ``Tracker`` of an in-memory result layer (``None`` for other layers)."""
    return _trackers.get(layer) if isinstance(layer, Labels) else None


def clear_corrections(layer: Labels | None) -> None:
    """Forget the corrections of a result layer (in memory or Zarr-backed) and show the network's labels again."""
    tracker = tracker_of(layer)
    if tracker is not None:
        tracker.clear()
    elif layer is not None and isinstance(layer.data, CorrectedView):
        layer.data.corrections.clear()
        layer.refresh()


class Tracker:
    """An in-memory result layer, the network's labels it shows (``network``, a copy) and its corrections."""

    def __init__(self, layer: Labels, network: np.ndarray, on_change: Callable[[], None]) -> None:
        self._layer = ref(layer)  # weak: the registry of trackers must not keep removed layers alive
        self.network = network
        self.corrections = Corrections(network.shape)
        self.on_change = on_change
        self._pending: set[int] = set()
        self._everything = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.sync)
        layer.events.paint.connect(self._on_paint)
        for name in ("undo", "redo"):  # they send no paint event: compare all of the layer after them
            setattr(layer, name, _then(getattr(layer, name), self._on_history))
        _trackers[layer] = self

    @property
    def layer(self) -> Labels | None:
        return self._layer()

    def _on_paint(self, event) -> None:
        """A stroke, fill or erase: compare its slices once napari has written them (it tells first)."""
        depth = self.network.shape[0] if self.network.ndim == 3 else 1
        for atom in event.value or []:
            zs = painted_slices(atom, depth) if self.network.ndim == 3 else [0]
            if zs is None:
                self._everything = True
            else:
                self._pending.update(zs)
        self._timer.start(0)

    def _on_history(self) -> None:
        self._everything = True
        self._timer.start(0)

    def sync(self, everything: bool = False) -> None:
        """Take what the layer shows into the record: the slices painted since, all of it after undo/redo or
        with ``everything`` (before the network's labels are made again: also edits made by scripts)."""
        self._everything |= everything
        self._timer.stop()
        data = getattr(self.layer, "data", None)
        if not isinstance(data, np.ndarray) or data.shape != self.network.shape:
            self._pending.clear()
            return
        if self._everything:
            self.corrections.reconcile(None, data, self.network)
        else:
            for z in sorted(self._pending):
                region = (z,) if self.network.ndim == 3 else None
                self.corrections.reconcile(region, data[z] if region else data, self.network[region or ...])
        changed = self._everything or bool(self._pending)
        self._pending.clear()
        self._everything = False
        if changed:
            self.on_change()

    def clear(self) -> None:
        """Forget the corrections and show the network's labels again."""
        self.sync()
        self.corrections.clear()
        self.layer.data[...] = self.network
        self.layer.refresh()


class ResultLayers:
    """The dock's result layers in the viewer, written with their corrections drawn over the network's labels.

    ``on_change`` is called (from a paint event's sync) when an in-memory result's record changed.
    """

    def __init__(self, viewer: napari.Viewer, on_change: Callable[[], None]) -> None:
        self.viewer, self.on_change = viewer, on_change
        self._trackers: dict[str, Tracker] = {}

    def named(self, name: str | None):
        """The viewer's layer called ``name`` (``None`` when there is none)."""
        return layer_named(self.viewer, name)

    def upsert(self, name: str, like, dtype: np.dtype, region: Region, values: np.ndarray, *,
               instances: bool = False) -> Labels:
        """Write the network's labels ``values`` at ``region`` of the result layer ``name`` with its corrections
        drawn over them (``_layers.upsert``: in place when the layer fits; instance ids renumbered above the
        corrected ones); the layer keeps its undo history."""
        layer = self.named(name)
        tracker = self._trackers.get(name)
        if tracker is not None and (tracker.layer is not layer or not _fits(layer, tracker.network, dtype)):
            tracker = None
        if tracker is not None:
            tracker.sync(everything=True)
            values = renumber_above(values, tracker.corrections) if instances else values
        shown = np.array(values, dtype=dtype)
        if tracker is not None:
            tracker.corrections.draw(shown, region)
        layer = upsert(self.viewer, name, Labels, like, dtype, region, shown)
        if tracker is None:
            tracker = Tracker(layer, np.zeros(layer.data.shape, dtype), self.on_change)
            self._trackers[name] = tracker
        tracker.network[region] = values
        return layer

    def editable(self, name: str, view: StoreView) -> CorrectedView:
        """The view of a Zarr-backed result to show as the layer ``name``: paintable, with the record of the layer
        now showing that name (a new threshold, a resumed or repeated run keep it) or a new one."""
        layer = self.named(name)
        record = layer.data.corrections if layer is not None and isinstance(layer.data, CorrectedView) else None
        return CorrectedView(view.path, view.placement, view.threshold, corrections=record)


def layer_named(viewer: napari.Viewer, name: str | None):
    """The viewer's layer called ``name`` (``None`` when there is none or no name is given)."""
    return next((layer for layer in viewer.layers if layer.name == name), None) if name else None


def go_to(viewer: napari.Viewer, layer, z: int) -> None:
    """Show slice ``z`` (axis 0) of ``layer`` in the viewer."""
    if layer.ndim >= 3:
        world = layer.data_to_world([z, *([0] * (layer.ndim - 1))])
        viewer.dims.set_point(viewer.dims.ndim - layer.ndim, float(world[0]))


def edit_objects(edit: str, ids: np.ndarray, where: list[np.ndarray]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The voxels (an index) and their new ids for ``edit`` ('merge', 'split' or 'delete') of the objects of
    ``ids`` under the points ``where`` (data coordinates); ValueError/IndexError with the reason it cannot."""
    for p in where:
        if any(c < 0 or c >= n for c, n in zip(p, ids.shape, strict=True)):
            raise ValueError(f"the point {tuple(int(c) for c in p)} is outside the layer")
    if edit == "merge":
        index, value = merge_objects(ids, objects_at(ids, where))
    elif edit == "split":
        index, value = split_object(ids, where)
    else:
        found = [o for o in dict.fromkeys(objects_at(ids, where)) if o]
        if not found:
            raise ValueError("there is no object under the points (background)")
        parts = [delete_object(ids, o)[0] for o in found]
        index, value = tuple(np.concatenate(axis) for axis in zip(*parts, strict=True)), 0
    return index, np.broadcast_to(np.asarray(value, ids.dtype), index[0].shape).copy()


def slices_text(slices: Sequence[int]) -> str:
    """'3 slices (z = 1, 4, 9)' for messages."""
    if not slices:
        return "no slice"
    shown = ", ".join(map(str, slices[:6])) + (", …" if len(slices) > 6 else "")
    return f"{len(slices)} slice{'s' * (len(slices) != 1)} (z = {shown})"


def training_marks(layer, mode: str) -> Callable[[int], np.ndarray] | None:
    """For a result layer: what the Fine-tune dock trains on at slice ``z``, with no copy of the layer: ``dense``
    the whole slice (the corrections over the network's labels; foreground = label > 0), ``scribbles`` only the
    corrected voxels (1 = corrected to foreground, 2 = corrected to background, 0 = not corrected: ignored).
    ``None`` for a layer that is not a result (its own values are the annotations)."""
    record = corrections_of(layer)
    if record is None:
        return None
    stack = layer.data.ndim == 3

    def marks(z: int) -> np.ndarray:
        if mode == "dense":
            return (np.asarray(layer.data[z] if stack else layer.data[...]) > 0).astype(np.uint8)
        where, what = record.mask((z,) if stack else None)
        where, what = where.reshape(where.shape[-2:]), what.reshape(what.shape[-2:])
        return np.where(where, np.where(what > 0, 1, 2), 0).astype(np.uint8)

    return marks


def _then(method: Callable[[], None], after: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        method()
        after()

    return run


def _fits(layer, network: np.ndarray, dtype: np.dtype) -> bool:
    data = getattr(layer, "data", None)
    return isinstance(data, np.ndarray) and data.shape == network.shape and data.dtype == np.dtype(dtype)
