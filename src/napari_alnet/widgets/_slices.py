"""The annotated-slice checklist of the fine-tune dock, ``painted_slices`` (which slices a napari paint event
touched), and ``embed`` to put a QWidget in a magicgui Container."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from magicgui.widgets import Container
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem, QWidget


class SliceList(QListWidget):
    """Checkable slice indices; a slice the user unticked stays unticked across refreshes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._unticked: set[int] = set()
        self._filling = False
        self.setMaximumHeight(96)
        self.itemChanged.connect(self._on_item)

    def set_slices(self, slices: Sequence[int], depth: int = 0) -> None:
        """Show ``slices`` (ticked unless the user unticked them before); ``depth`` > 1 labels them 'z = …'."""
        self._filling = True
        try:
            self.clear()
            for z in slices:
                item = QListWidgetItem(f"z = {z}" if depth > 1 else "the image (2D)")
                item.setData(Qt.ItemDataRole.UserRole, int(z))
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Unchecked if z in self._unticked else Qt.CheckState.Checked)
                self.addItem(item)
        finally:
            self._filling = False

    def slices(self) -> list[int]:
        """All listed slices."""
        return [self.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.count())]

    def checked(self) -> list[int]:
        """The ticked slices."""
        return [z for i, z in enumerate(self.slices()) if self.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, z: int, checked: bool) -> None:
        for i, value in enumerate(self.slices()):
            if value == z:
                self.item(i).setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def _on_item(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        z = item.data(Qt.ItemDataRole.UserRole)
        if item.checkState() == Qt.CheckState.Checked:
            self._unticked.discard(z)
        else:
            self._unticked.add(z)


def embed(widget: QWidget, label: str = "") -> Container:
    """A magicgui Container holding ``widget`` (so it can sit, labelled, among magicgui widgets)."""
    box = Container(labels=False, label=label)
    box.native.layout().setContentsMargins(0, 0, 0, 0)
    box.native.layout().addWidget(widget)
    return box


def painted_slices(atom, depth: int) -> list[int] | None:
    """The z of the slices a napari Labels history atom changed: a masked paint (``slice_key``: its bounding
    box) or a ``data_setitem`` 3-tuple (indices, old, new) of a (Z, Y, X) layer; ``None`` for anything else."""
    key = getattr(atom, "slice_key", None)
    if key is not None and len(key) == 3 and isinstance(key[0], slice):
        return list(range(*key[0].indices(depth)))
    if isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple) and len(atom[0]) == 3:
        return [int(z) for z in np.unique(np.asarray(atom[0][0]))]
    return None
