"""The three docks on a 1366 x 768 laptop screen, opened as a user opens them (Plugins menu: stacked on the right)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
)

from napari_alnet.widgets import BatchWidget, FinetuneWidget, SegmentWidget
from napari_alnet.widgets._layout import ScrollDock

pytestmark = pytest.mark.gui
PLUGIN = "napari-alnet"
DOCKS = {"Segment (AL-Net)": SegmentWidget, "Fine-tune (AL-Net)": FinetuneWidget,
         "Batch segment (AL-Net)": BatchWidget}
SCREEN = (1366, 768)
#: A laptop's desktop keeps some of its 768 rows (a top bar or task bar, the window's title bar).
DESKTOP_ROWS = 60
INPUTS = (QLineEdit, QSpinBox, QDoubleSpinBox, QComboBox, QCheckBox, QPushButton, QSlider)


@pytest.fixture
def laptop(make_napari_viewer, qtbot):
    """A shown viewer sized to a 1366 x 768 screen with the three docks opened from the plugin menu."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8), name="em")
    window = viewer.window._qt_window
    window.resize(SCREEN[0], SCREEN[1] - DESKTOP_ROWS)
    docks = {}
    for name in DOCKS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        docks[name] = (dock, widget)
    qtbot.wait(50)
    return viewer, docks


def test_three_docks_fit_a_laptop_screen(laptop, qtbot):
    viewer, docks = laptop
    window = viewer.window._qt_window
    heights = {name: dock.minimumSizeHint().height() for name, (dock, _) in docks.items()}
    for name, (dock, widget) in docks.items():
        assert isinstance(widget, DOCKS[name]) and isinstance(widget, ScrollDock), name
        assert isinstance(dock.widget(), QScrollArea), f"{name}: napari docked the form, not its scroll area"
    # napari stacks plugin docks in the right-hand area: their minimum heights add up
    assert sum(heights.values()) <= SCREEN[1] - DESKTOP_ROWS - 60, heights  # menu and status bars
    assert window.minimumSizeHint().height() <= SCREEN[1] - DESKTOP_ROWS, heights
    assert window.minimumSizeHint().width() <= SCREEN[0]
    qtbot.waitUntil(lambda: window.height() <= SCREEN[1] - DESKTOP_ROWS, timeout=2000)
    for name, (dock, widget) in docks.items():  # each dock got room to show controls, and scrolls to the rest
        assert dock.height() >= 100, (name, dock.height())
        bar = widget.scroll_area.verticalScrollBar()
        assert widget.content_height <= widget.scroll_area.viewport().height() + bar.maximum() + 2, name


def test_every_control_has_a_tooltip(laptop):
    _viewer, docks = laptop
    for name, (_dock, widget) in docks.items():
        missing = [f"{type(w).__name__} {_text(w)!r}" for w in widget.native.findChildren(INPUTS)
                   if not w.toolTip().strip() and not _inner_part(w)]
        assert not missing, f"{name}: controls without a tooltip: {missing}"


def _text(widget) -> str:
    for getter in ("text", "currentText"):
        if hasattr(widget, getter):
            return getattr(widget, getter)()
    return ""


def _inner_part(widget) -> bool:
    """Parts Qt builds inside another control (a combo box's line edit, a spin box's editor, a file edit's parts
    carry their parent's tooltip)."""
    parent = widget.parentWidget()
    return isinstance(parent, (QComboBox, QSpinBox, QDoubleSpinBox)) or (
        isinstance(widget, QLineEdit) and isinstance(parent, QSpinBox | QDoubleSpinBox))
