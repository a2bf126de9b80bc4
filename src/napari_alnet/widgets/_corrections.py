"""Corrections in the Segment dock: result Labels layers a user paints on, whose edits are kept.

An in-memory result layer has a ``Tracker``: a copy of the network's labels and an ``engine.corrections`` record
kept current from the layer's paint events (the touched slices are compared with the network's labels) and after
its undo/redo (the whole layer is compared; the layer's ``undo``/``redo`` are wrapped, they send no event).
Every time the network's labels are made again (``CorrectionsPanel.upsert``: a new threshold, a re-segmented
scope) the record is drawn over them and only the layer's NumPy data is written, in place, so napari's undo
history stays. A
Zarr-backed result is a ``CorrectedView`` holding its record itself (``_volume``). The panel shows how many slices
are corrected, goes to them, clears them (after asking), asks before a new run discards them, and offers the
proofreading edits of instance results (merge, split, delete) on points the user places.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from weakref import WeakKeyDictionary, ref

import napari
import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QMessageBox

from ..engine.corrections import (
    Corrections,
    delete_object,
    merge_objects,
    most_uncertain_slice,
    objects_at,
    renumber_above,
    split_object,
    uncertainty,
)
from ._layers import Region, upsert
from ._slices import painted_slices
from ._volume import CorrectedView, StoreView

POINTS = "proofreading points"
KEEP, DISCARD, CANCEL = "Keep corrections", "Discard corrections", "Cancel"

_trackers: WeakKeyDictionary[Labels, Tracker] = WeakKeyDictionary()


def question(title: str, text: str, choices: Sequence[str], default: str) -> str:
    """Ask with a QMessageBox; returns the chosen button's text (``default`` when the box is closed).
    Tests answer it by replacing this function."""
    box = QMessageBox(QMessageBox.Icon.Question, title, text)
    buttons = {box.addButton(choice, QMessageBox.ButtonRole.AcceptRole if choice == default else
                             QMessageBox.ButtonRole.RejectRole): choice for choice in choices}
    box.setDefaultButton(next(b for b, c in buttons.items() if c == default))
    box.exec()
    return buttons.get(box.clickedButton(), default)


def corrections_of(layer) -> Corrections | None:
    """The corrections record of a result layer (current: pending paint is taken in); ``None`` for other layers."""
    if isinstance(getattr(layer, "data", None), CorrectedView):
        return layer.data.corrections
    tracker = _trackers.get(layer) if isinstance(layer, Labels) else None
    if tracker is None:
        return None
    tracker.sync()
    return tracker.corrections


def corrected_view(layer) -> CorrectedView | None:
    """The paintable view of a Zarr-backed result layer (``None`` for other layers)."""
    data = getattr(layer, "data", None)
    return data if isinstance(data, CorrectedView) else None


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


class CorrectionsPanel(Container):
    """The dock's corrections row: what the result layer allows, how many slices are corrected, Show / Clear,
    and Merge / Split / Delete for instance results (on the points of the 'proofreading points' layer).

    ``results()`` names the dock's current result layers (labels first); ``last()`` gives the dock's last result
    (with ``name``, ``source``, ``region`` and, in memory, ``probabilities``) and the threshold, for the
    uncertainty map.
    """

    def __init__(self, viewer: napari.Viewer, results: Callable[[], Sequence[str | None]],
                 last: Callable[[], tuple[object, float]] | None = None) -> None:
        super().__init__(labels=False)
        self.viewer, self.results, self.last = viewer, results, last
        self._trackers: dict[str, Tracker] = {}
        self._shown = -1
        self._visited: set[int] = set()
        self.state = Label(value="")
        self.state.native.setWordWrap(True)
        self.count = Label(value="Corrections: none")
        self.show_button = PushButton(text="Show", tooltip="go to the next corrected slice of the result layer (the "
                                      "voxels you painted, filled or erased are kept over new thresholds and runs)")
        self.clear_button = PushButton(text="Clear…", tooltip="forget the corrections of the result layer and show "
                                       "the network's labels again (asks first; cannot be undone)")
        self.points_button = PushButton(text="Place points", tooltip="add a 'proofreading points' layer: click "
                                        "on objects of an instance result, then Merge, Split or Delete")
        self.merge_button = PushButton(text="Merge", tooltip="merge the objects under the points into the first "
                                       "one (undo: Ctrl+Z on the result layer)")
        self.split_button = PushButton(text="Split", tooltip="split the object under two or more points: each "
                                       "voxel goes to the nearest point inside the object")
        self.delete_button = PushButton(text="Delete", tooltip="delete the objects under the points (they become "
                                        "background)")
        self.uncertainty_button = PushButton(text="Uncertainty", tooltip="add a layer of how unsure the network is "
                                             "(1: the probability sits on the threshold, 0: far from it)")
        self.next_button = PushButton(text="Next uncertain slice", tooltip="go to the slice with the most uncertain "
                                      "pixels that you have not corrected or visited yet: where a correction "
                                      "helps fine-tuning most")
        rows = [Container(layout="horizontal", labels=False, widgets=widgets) for widgets in
                ([self.count, self.show_button, self.clear_button],
                 [self.points_button, self.merge_button, self.split_button, self.delete_button],
                 [self.uncertainty_button, self.next_button])]
        for row in rows:
            row.native.layout().setContentsMargins(0, 0, 0, 0)
        self.extend([self.state, *rows])
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.update)
        self.show_button.changed.connect(self.show_next)
        self.clear_button.changed.connect(self.ask_clear)
        self.points_button.changed.connect(self.place_points)
        self.merge_button.changed.connect(lambda *_: self.proofread("merge"))
        self.split_button.changed.connect(lambda *_: self.proofread("split"))
        self.delete_button.changed.connect(lambda *_: self.proofread("delete"))
        self.uncertainty_button.changed.connect(self.show_uncertainty)
        self.next_button.changed.connect(self.next_uncertain)
        events = [(viewer.layers.events.inserted, self._on_inserted), (viewer.layers.events.removed, self.update),
                  (viewer.layers.selection.events.active, self.update)]
        for event, handler in events:
            event.connect(handler)

        def disconnect(*_) -> None:  # the dock is closed (or the viewer): no more updates of deleted widgets
            for event, handler in events:
                event.disconnect(handler)

        self.native.destroyed.connect(disconnect)

    # --- results the dock writes ----------------------------------------------------------------------------------

    def upsert(self, name: str, like, dtype: np.dtype, region: Region, values: np.ndarray, *,
               instances: bool = False) -> Labels:
        """Write the network's labels ``values`` at ``region`` of the result layer ``name`` with its corrections
        drawn over them (``_layers.upsert``: in place when the layer fits; instance ids renumbered above the
        corrected ones); the layer keeps its undo history."""
        layer = self._layer(name)
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
            tracker = Tracker(layer, np.zeros(layer.data.shape, dtype), self.schedule_update)
            self._trackers[name] = tracker
        tracker.network[region] = values
        self.update()
        return layer

    def editable(self, name: str, view: StoreView) -> CorrectedView:
        """The view of a Zarr-backed result to show as the layer ``name``: paintable, with the record of the layer
        now showing that name (a new threshold, a resumed or repeated run keep it) or a new one."""
        layer = self._layer(name)
        record = layer.data.corrections if layer is not None and isinstance(layer.data, CorrectedView) else None
        return CorrectedView(view.path, view.placement, view.threshold, corrections=record)

    def ask_before_run(self, names: Sequence[str]) -> bool:
        """Before a run writes the layers ``names``: when they hold corrections, ask whether to keep them (drawn
        over the new result; the default) or discard them; False when the user cancels."""
        found = {name: record for name in names if (record := corrections_of(self._layer(name)))}
        if not found:
            return True
        slices = sorted({z for record in found.values() for z in record.slices()})
        answer = question("Segment (AL-Net)", f"{', '.join(map(repr, found))} holds corrections on "
                          f"{_slices_text(slices)}. Keep them (they are drawn over the new result) or discard "
                          "them?", [KEEP, DISCARD, CANCEL], KEEP)
        if answer == CANCEL:
            return False
        if answer == DISCARD:
            for name in found:
                self.clear(self._layer(name))
        return True

    # --- the buttons ----------------------------------------------------------------------------------------------

    def target(self) -> Labels | None:
        """The result layer the buttons act on: the active layer when it is a result, else the dock's labels."""
        active = self.viewer.layers.selection.active
        if corrections_of(active) is not None:
            return active
        return next((layer for name in self.results() if (layer := self._layer(name)) is not None
                     and corrections_of(layer) is not None), None)

    def update(self, *_) -> None:
        """Say what the result layer allows and how many slices are corrected."""
        try:
            self._update()
        except RuntimeError:  # the dock's widgets were deleted (napari closing)
            return

    def _update(self) -> None:
        layer = self.target()
        record = corrections_of(layer) if layer is not None else None
        self.count.value = f"Corrections: {_slices_text(record.slices()) if record else 'none'}"
        self.show_button.enabled = self.clear_button.enabled = bool(record)
        instances = layer is not None and isinstance(layer.data, np.ndarray) and layer.data.dtype != np.uint8
        for button in (self.merge_button, self.split_button, self.delete_button):
            button.enabled = instances
        if layer is None:
            self.state.value = ""
        elif not layer.editable:
            self.state.value = (f"{layer.name!r} is read-only (napari does not paint on multiscale layers); "
                                "segment a region or a single-resolution layer to correct it")
        else:
            self.state.value = (f"{layer.name!r} is editable: paint, fill and erase with napari's tools; your "
                                "corrections are kept over new thresholds, re-runs and resumed runs")

    def schedule_update(self) -> None:
        try:
            self._timer.start()
        except RuntimeError:  # deleted with the dock
            return

    def show_next(self, *_) -> int | None:
        """Go to the next corrected slice of the result layer (cycling); returns its z."""
        layer = self.target()
        record = corrections_of(layer) if layer is not None else None
        if not record:
            return None
        slices = record.slices()
        z = next((s for s in slices if s > self._shown), slices[0])
        self._shown = z
        self.viewer.layers.selection.active = layer
        self._go_to(layer, z)
        return z

    def ask_clear(self, *_) -> bool:
        layer = self.target()
        record = corrections_of(layer) if layer is not None else None
        if not record:
            return False
        answer = question("Segment (AL-Net)", f"Clear the corrections of {layer.name!r} on "
                          f"{_slices_text(record.slices())}? The network's labels are shown again there; this "
                          "cannot be undone.", ["Clear", CANCEL], CANCEL)
        if answer == "Clear":
            self.clear(layer)
        return answer == "Clear"

    def clear(self, layer: Labels | None) -> None:
        tracker = _trackers.get(layer) if layer is not None else None
        if tracker is not None:
            tracker.clear()
        elif layer is not None and isinstance(layer.data, CorrectedView):
            layer.data.corrections.clear()
            layer.refresh()
        self.update()

    def place_points(self, *_) -> Points:
        """The 'proofreading points' layer, in add mode (made to match the result layer when missing)."""
        points = self._layer(POINTS)
        layer = self.target()
        if not isinstance(points, Points):
            ndim = layer.ndim if layer is not None else self.viewer.dims.ndim
            kwargs = {"scale": layer.scale, "translate": layer.translate} if layer is not None else {}
            points = self.viewer.add_points(np.zeros((0, ndim)), name=POINTS, size=6, face_color="yellow", **kwargs)
        self.viewer.layers.selection.active = points
        points.mode = "add"
        return points

    def proofread(self, edit: str) -> bool:
        """Merge, split or delete the objects under the proofreading points of the instance result layer, as one
        undoable step; the edited objects are kept as corrections."""
        layer, points = self._instance_target(), self._layer(POINTS)
        if layer is None:
            show_warning("Segment: merge, split and delete work on an in-memory instance result: tick Instances, "
                         "segment, and select the 'instances' layer")
            return False
        if not isinstance(points, Points) or len(points.data) == 0:
            show_warning("Segment: no points: press 'Place points' and click on the objects first")
            return False
        ids = layer.data
        where = [np.round(layer.world_to_data(points.data_to_world(p))).astype(int) for p in points.data]
        try:
            index, values = _edit(edit, ids, where)
        except (ValueError, IndexError) as exc:
            show_warning(f"Segment: {edit}: {exc}")
            return False
        layer.data_setitem(index, values)
        tracker = _trackers[layer]
        tracker.corrections.keep(index, values)
        points.data = np.zeros((0, points.ndim))
        self.viewer.layers.selection.active = layer
        show_info(f"Segment: {edit} done on {layer.name!r} (Ctrl+Z on the layer undoes it)")
        self.update()
        return True

    def show_uncertainty(self, *_) -> Image | None:
        """The '<result> uncertainty' layer of the dock's last in-memory result at the current threshold."""
        result, threshold = self.last() if self.last is not None else (None, 0.5)
        prob = getattr(result, "probabilities", None)
        if not isinstance(prob, np.ndarray) or result.source not in self.viewer.layers:
            show_warning("Segment: the uncertainty map needs an in-memory result: segment first (big, Zarr-backed "
                         "results: segment a z-range or the current slice)")
            return None
        layer = upsert(self.viewer, f"{result.name} uncertainty", Image, result.source, np.dtype(np.float32),
                       result.region, uncertainty(prob, threshold))
        layer.visible = True
        return layer

    def next_uncertain(self, *_) -> int | None:
        """Go to the most uncertain slice not corrected and not visited yet (all visited: start again)."""
        layer = self.show_uncertainty()
        if layer is None or layer.ndim < 3:
            return None
        target = self.target()
        record = corrections_of(target) if target is not None else None
        skip = set(record.slices() if record else [])
        z = most_uncertain_slice(layer.data, skip=sorted(skip | self._visited))
        if z is None:
            self._visited.clear()
            z = most_uncertain_slice(layer.data, skip=sorted(skip))
        if z is None:
            return None
        self._visited.add(z)
        self._go_to(layer, z)
        return z

    # --- inside ---------------------------------------------------------------------------------------------------

    def _instance_target(self) -> Labels | None:
        layer = self.target()
        active = self.viewer.layers.selection.active
        names = [n for n in self.results() if n and n.endswith(" instances")]
        if layer is None or layer.data.dtype == np.uint8:
            layer = self._layer(names[0]) if names else None
        if isinstance(active, Labels) and active in _trackers and active.data.dtype != np.uint8:
            layer = active
        return layer if layer is not None and layer in _trackers else None

    def _go_to(self, layer, z: int) -> None:
        """Show slice ``z`` (axis 0) of ``layer`` in the viewer."""
        if layer.ndim >= 3:
            world = layer.data_to_world([z, *([0] * (layer.ndim - 1))])
            self.viewer.dims.set_point(self.viewer.dims.ndim - layer.ndim, float(world[0]))

    def _layer(self, name: str | None):
        return next((layer for layer in self.viewer.layers if layer.name == name), None) if name else None

    def _on_inserted(self, event) -> None:
        layer = event.value
        if isinstance(layer, Labels):
            layer.events.paint.connect(lambda *_: self.schedule_update())
        self.update()


def _edit(edit: str, ids: np.ndarray, where: list[np.ndarray]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
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


def _then(method: Callable[[], None], after: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        method()
        after()

    return run


def _fits(layer, network: np.ndarray, dtype: np.dtype) -> bool:
    data = getattr(layer, "data", None)
    return isinstance(data, np.ndarray) and data.shape == network.shape and data.dtype == np.dtype(dtype)


def _slices_text(slices: Sequence[int]) -> str:
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
