"""Corrections in the Segment dock: result Labels layers a user paints on, whose edits are kept.

The record of each result layer and the writing of new results over it are ``_correction_records``. This module
holds the dock's corrections section (``CorrectionsPanel``), made of one row per job: ``CorrectionsRow`` shows how
many slices are corrected, goes to them, clears them (after asking) and asks before a new run discards them;
``ProofreadingRow`` offers the proofreading edits of instance results (merge, split, delete) on points the user
places; ``UncertaintyRow`` shows where the network is unsure and goes to the next slice worth correcting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import napari
import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QMessageBox

from ..engine.corrections import Corrections, most_uncertain_slice, uncertainty
from ._correction_records import (
    ResultLayers,
    clear_corrections,
    corrected_view,
    corrections_of,
    edit_objects,
    go_to,
    slices_text,
    tracker_of,
    training_marks,
)
from ._layers import Region, upsert
from ._volume import CorrectedView, StoreView

__all__ = ["CorrectionsPanel", "corrected_view", "corrections_of", "question", "training_marks"]

POINTS = "proofreading points"
KEEP, DISCARD, CANCEL = "Keep corrections", "Discard corrections", "Cancel"


def question(title: str, text: str, choices: Sequence[str], default: str) -> str:
    """Ask with a QMessageBox; returns the chosen button's text (``default`` when the box is closed).
    Tests answer it by replacing this function."""
    box = QMessageBox(QMessageBox.Icon.Question, title, text)
    buttons = {box.addButton(choice, QMessageBox.ButtonRole.AcceptRole if choice == default else
                             QMessageBox.ButtonRole.RejectRole): choice for choice in choices}
    box.setDefaultButton(next(b for b, c in buttons.items() if c == default))
    box.exec()
    return buttons.get(box.clickedButton(), default)


class CorrectionsPanel(Container):
    """The dock's corrections section: what the result layer allows, then the rows Corrections / Show / Clear,
    Place points / Merge / Split / Delete (instance results) and Uncertainty / Next uncertain slice.

    ``results()`` names the dock's current result layers (labels first); ``last()`` gives the dock's last result
    (with ``name``, ``source``, ``region`` and, in memory, ``probabilities``) and the threshold, for the
    uncertainty map.
    """

    def __init__(self, viewer: napari.Viewer, results: Callable[[], Sequence[str | None]],
                 last: Callable[[], tuple[object, float]] | None = None) -> None:
        super().__init__(labels=False)
        self.viewer, self.results, self.last = viewer, results, last
        self.layers = ResultLayers(viewer, self.schedule_update)
        self.state = Label(value="")
        self.state.native.setWordWrap(True)
        self.kept, self.editing, self.review = CorrectionsRow(self), ProofreadingRow(self), UncertaintyRow(self)
        self.count = self.kept.count
        self.extend([self.state, self.kept, self.editing, self.review])
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.update)
        events = [(viewer.layers.events.inserted, self._on_inserted), (viewer.layers.events.removed, self.update),
                  (viewer.layers.selection.events.active, self.update)]
        for event, handler in events:
            event.connect(handler)

        def disconnect(*_) -> None:  # the dock is closed (or the viewer): no more updates of deleted widgets
            for event, handler in events:
                event.disconnect(handler)

        self.native.destroyed.connect(disconnect)

    # --- what the dock calls (the rows do the work) ---------------------------------------------------------------

    def upsert(self, name: str, like, dtype: np.dtype, region: Region, values: np.ndarray, *,
               instances: bool = False) -> Labels:
        """``ResultLayers.upsert``: the network's labels written with the layer's corrections drawn over them."""
        layer = self.layers.upsert(name, like, dtype, region, values, instances=instances)
        self.update()
        return layer

    def editable(self, name: str, view: StoreView) -> CorrectedView:
        """``ResultLayers.editable``: the paintable view of a Zarr-backed result, keeping the layer's record."""
        return self.layers.editable(name, view)

    def ask_before_run(self, names: Sequence[str]) -> bool:
        """``CorrectionsRow.ask_before_run``: keep or discard the corrections a run would write over."""
        return self.kept.ask_before_run(names)

    def show_next(self, *_) -> int | None:
        return self.kept.show_next()

    def ask_clear(self, *_) -> bool:
        return self.kept.ask_clear()

    def clear_corrections_of(self, layer: Labels | None) -> None:
        """Forget the corrections painted on ``layer`` (not magicgui's ``Container.clear``, which removes widgets)."""
        self.kept.clear_corrections_of(layer)

    def place_points(self, *_) -> Points:
        return self.editing.place_points()

    def proofread(self, edit: str) -> bool:
        return self.editing.proofread(edit)

    def show_uncertainty(self, *_) -> Image | None:
        return self.review.show_uncertainty()

    def next_uncertain(self, *_) -> int | None:
        return self.review.next_uncertain()

    # --- the result layer the rows act on -------------------------------------------------------------------------

    def target(self) -> Labels | None:
        """The result layer the buttons act on: the active layer when it is a result, else the dock's labels."""
        active = self.viewer.layers.selection.active
        if corrections_of(active) is not None:
            return active
        return next((layer for name in self.results() if (layer := self.layers.named(name)) is not None
                     and corrections_of(layer) is not None), None)

    def target_record(self) -> tuple[Labels | None, Corrections | None]:
        """The target layer and its corrections record (``None``, ``None`` without one)."""
        layer = self.target()
        return layer, corrections_of(layer) if layer is not None else None

    def update(self, *_) -> None:
        """Say what the result layer allows and how many slices are corrected."""
        try:
            self._update()
        except RuntimeError:  # the dock's widgets were deleted (napari closing)
            return

    def _update(self) -> None:
        layer, record = self.target_record()
        self.kept.refresh(record)
        self.editing.refresh(layer is not None and isinstance(layer.data, np.ndarray)
                             and layer.data.dtype != np.uint8)
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

    def _on_inserted(self, event) -> None:
        layer = event.value
        if isinstance(layer, Labels):
            layer.events.paint.connect(lambda *_: self.schedule_update())
        self.update()


def _row(widgets: Sequence) -> dict:
    return {"layout": "horizontal", "labels": False, "widgets": widgets}


class CorrectionsRow(Container):
    """How many slices of the result layer are corrected; Show goes to them, Clear… forgets them (after asking);
    before a run writes over result layers that hold corrections, asks whether to keep them."""

    def __init__(self, panel: CorrectionsPanel) -> None:
        self.panel = panel
        self._shown = -1
        self.count = Label(value="Corrections: none")
        self.show_button = PushButton(text="Show", tooltip="go to the next corrected slice of the result layer (the "
                                      "voxels you painted, filled or erased are kept over new thresholds and runs)")
        self.clear_button = PushButton(text="Clear…", tooltip="forget the corrections of the result layer and show "
                                       "the network's labels again (asks first; cannot be undone)")
        super().__init__(**_row([self.count, self.show_button, self.clear_button]))
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self.show_button.changed.connect(self.show_next)
        self.clear_button.changed.connect(self.ask_clear)

    def refresh(self, record: Corrections | None) -> None:
        self.count.value = f"Corrections: {slices_text(record.slices()) if record else 'none'}"
        self.show_button.enabled = self.clear_button.enabled = bool(record)

    def show_next(self, *_) -> int | None:
        """Go to the next corrected slice of the result layer (cycling); returns its z."""
        layer, record = self.panel.target_record()
        if not record:
            return None
        slices = record.slices()
        z = next((s for s in slices if s > self._shown), slices[0])
        self._shown = z
        self.panel.viewer.layers.selection.active = layer
        go_to(self.panel.viewer, layer, z)
        return z

    def ask_clear(self, *_) -> bool:
        layer, record = self.panel.target_record()
        if not record:
            return False
        answer = question("Segment (AL-Net)", f"Clear the corrections of {layer.name!r} on "
                          f"{slices_text(record.slices())}? The network's labels are shown again there; this "
                          "cannot be undone.", ["Clear", CANCEL], CANCEL)
        if answer == "Clear":
            self.clear_corrections_of(layer)
        return answer == "Clear"

    def clear_corrections_of(self, layer: Labels | None) -> None:
        """Forget the corrections painted on ``layer`` and show the network's labels there again."""
        clear_corrections(layer)
        self.panel.update()

    def ask_before_run(self, names: Sequence[str]) -> bool:
        """Before a run writes the layers ``names``: when they hold corrections, ask whether to keep them (drawn
        over the new result; the default) or discard them; False when the user cancels."""
        found = {name: record for name in names if (record := corrections_of(self.panel.layers.named(name)))}
        if not found:
            return True
        slices = sorted({z for record in found.values() for z in record.slices()})
        answer = question("Segment (AL-Net)", f"{', '.join(map(repr, found))} holds corrections on "
                          f"{slices_text(slices)}. Keep them (they are drawn over the new result) or discard "
                          "them?", [KEEP, DISCARD, CANCEL], KEEP)
        if answer == CANCEL:
            return False
        if answer == DISCARD:
            for name in found:
                self.clear_corrections_of(self.panel.layers.named(name))
        return True


class ProofreadingRow(Container):
    """Place points / Merge / Split / Delete: edits of the objects of an in-memory instance result under the
    points of the 'proofreading points' layer, each one undoable step kept as corrections."""

    def __init__(self, panel: CorrectionsPanel) -> None:
        self.panel = panel
        self.points_button = PushButton(text="Place points", tooltip="add a 'proofreading points' layer: click "
                                        "on objects of an instance result, then Merge, Split or Delete")
        self.merge_button = PushButton(text="Merge", tooltip="merge the objects under the points into the first "
                                       "one (undo: Ctrl+Z on the result layer)")
        self.split_button = PushButton(text="Split", tooltip="split the object under two or more points: each "
                                       "voxel goes to the nearest point inside the object")
        self.delete_button = PushButton(text="Delete", tooltip="delete the objects under the points (they become "
                                        "background)")
        super().__init__(**_row([self.points_button, self.merge_button, self.split_button, self.delete_button]))
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self.points_button.changed.connect(self.place_points)
        self.merge_button.changed.connect(lambda *_: self.proofread("merge"))
        self.split_button.changed.connect(lambda *_: self.proofread("split"))
        self.delete_button.changed.connect(lambda *_: self.proofread("delete"))

    def refresh(self, instances: bool) -> None:
        for button in (self.merge_button, self.split_button, self.delete_button):
            button.enabled = instances

    def place_points(self, *_) -> Points:
        """The 'proofreading points' layer, in add mode (made to match the result layer when missing)."""
        viewer, points, layer = self.panel.viewer, self.panel.layers.named(POINTS), self.panel.target()
        if not isinstance(points, Points):
            ndim = layer.ndim if layer is not None else viewer.dims.ndim
            kwargs = {"scale": layer.scale, "translate": layer.translate} if layer is not None else {}
            points = viewer.add_points(np.zeros((0, ndim)), name=POINTS, size=6, face_color="yellow", **kwargs)
        viewer.layers.selection.active = points
        points.mode = "add"
        return points

    def proofread(self, edit: str) -> bool:
        """Merge, split or delete the objects under the proofreading points of the instance result layer, as one
        undoable step; the edited objects are kept as corrections."""
        layer, points = self._instance_target(), self.panel.layers.named(POINTS)
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
            index, values = edit_objects(edit, ids, where)
        except (ValueError, IndexError) as exc:
            show_warning(f"Segment: {edit}: {exc}")
            return False
        layer.data_setitem(index, values)
        tracker_of(layer).corrections.keep(index, values)
        points.data = np.zeros((0, points.ndim))
        self.panel.viewer.layers.selection.active = layer
        show_info(f"Segment: {edit} done on {layer.name!r} (Ctrl+Z on the layer undoes it)")
        self.panel.update()
        return True

    def _instance_target(self) -> Labels | None:
        layer = self.panel.target()
        active = self.panel.viewer.layers.selection.active
        names = [n for n in self.panel.results() if n and n.endswith(" instances")]
        if layer is None or layer.data.dtype == np.uint8:
            layer = self.panel.layers.named(names[0]) if names else None
        if tracker_of(active) is not None and active.data.dtype != np.uint8:
            layer = active
        return layer if tracker_of(layer) is not None else None


class UncertaintyRow(Container):
    """Uncertainty / Next uncertain slice: where the network is unsure about the dock's last in-memory result,
    and the slice a correction helps fine-tuning most."""

    def __init__(self, panel: CorrectionsPanel) -> None:
        self.panel = panel
        self._visited: set[int] = set()
        self.uncertainty_button = PushButton(text="Uncertainty", tooltip="add a layer of how unsure the network is "
                                             "(1: the probability sits on the threshold, 0: far from it)")
        self.next_button = PushButton(text="Next uncertain slice", tooltip="go to the slice with the most uncertain "
                                      "pixels that you have not corrected or visited yet: where a correction "
                                      "helps fine-tuning most")
        super().__init__(**_row([self.uncertainty_button, self.next_button]))
        self.native.layout().setContentsMargins(0, 0, 0, 0)
        self.uncertainty_button.changed.connect(self.show_uncertainty)
        self.next_button.changed.connect(self.next_uncertain)

    def show_uncertainty(self, *_) -> Image | None:
        """The '<result> uncertainty' layer of the dock's last in-memory result at the current threshold."""
        viewer = self.panel.viewer
        result, threshold = self.panel.last() if self.panel.last is not None else (None, 0.5)
        prob = getattr(result, "probabilities", None)
        if not isinstance(prob, np.ndarray) or result.source not in viewer.layers:
            show_warning("Segment: the uncertainty map needs an in-memory result: segment first (big, Zarr-backed "
                         "results: segment a z-range or the current slice)")
            return None
        layer = upsert(viewer, f"{result.name} uncertainty", Image, result.source, np.dtype(np.float32),
                       result.region, uncertainty(prob, threshold))
        layer.visible = True
        return layer

    def next_uncertain(self, *_) -> int | None:
        """Go to the most uncertain slice not corrected and not visited yet (all visited: start again)."""
        layer = self.show_uncertainty()
        if layer is None or layer.ndim < 3:
            return None
        _, record = self.panel.target_record()
        skip = set(record.slices() if record else [])
        z = most_uncertain_slice(layer.data, skip=sorted(skip | self._visited))
        if z is None:
            self._visited.clear()
            z = most_uncertain_slice(layer.data, skip=sorted(skip))
        if z is None:
            return None
        self._visited.add(z)
        go_to(self.panel.viewer, layer, z)
        return z
