"""Layout for the docks: a dock that scrolls (so it fits a laptop screen) and sections that fold.

napari docks a magicgui widget's ``native``; a ``ScrollDock``'s ``native`` is its scroll area, so napari may give
the dock less height than its controls need (three docks on a 1366 x 768 screen) and the user scrolls. A
``Section`` is a header button (``▸ title`` / ``▾ title``) and a body of controls that it shows or hides.
"""

from __future__ import annotations

from collections.abc import Sequence

from magicgui.widgets import Container, Label, PushButton, Widget
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QFrame,
    QLineEdit,
    QScrollArea,
    QSizePolicy,
    QWidget,
)

#: The least height a dock asks napari for: its title bar and a few rows; the rest scrolls.
MIN_DOCK_HEIGHT = 120
OPEN, CLOSED = "▾", "▸"
#: The Qt widgets a user types into, clicks or drags: each must explain itself in a tooltip.
INPUT_TYPES = (QLineEdit, QAbstractSpinBox, QComboBox, QAbstractButton, QAbstractSlider)


def share_tooltips(root: QWidget) -> None:
    """Give the parts of a composite control (a file field's text box and button, a slider's number box) the
    tooltip of the control they make up, where they have none: an enclosing widget's, or for the parts of a
    control that is not a container (a slider), another part's."""
    for widget in root.findChildren(INPUT_TYPES):
        node, tip = widget, ""
        while not tip and node is not root and node is not None:
            node = node.parentWidget()
            if node is None:
                break
            tip = node.toolTip()
            control = getattr(node, "_magic_widget", None)
            if not tip and control is not None and not isinstance(control, Container):
                tip = next((part.toolTip() for part in node.findChildren(INPUT_TYPES) if part.toolTip()), "")
        if tip and not widget.toolTip():
            widget.setToolTip(tip)


class ScrollDock(Container):
    """A labelled magicgui ``Container`` inside a ``QScrollArea`` (vertical scroll bar as needed)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(labels=True, scrollable=True, **kwargs)
        scroll = self.scroll_area
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumHeight(MIN_DOCK_HEIGHT)
        scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self._fit_width = _FitWidth(scroll)
        scroll.widget().installEventFilter(self._fit_width)

    def insert(self, key: int, widget: Widget) -> None:
        super().insert(key, widget)
        share_tooltips(widget.native)
        if isinstance(widget, Label):  # messages wrap at the dock's width instead of widening it
            widget.native.setWordWrap(True)
        wrapper = widget._labeled_widget() if isinstance(widget, Section) else None
        if wrapper is not None:  # a section spans the full width: no (empty) label column beside it
            wrapper._label_widget.visible = False

    @property
    def scroll_area(self) -> QScrollArea:
        return self.root_native_widget

    @property
    def native(self):  # napari docks ``native``: the scroll area, not the form inside it
        return self.root_native_widget

    @property
    def content_height(self) -> int:
        """The height the controls would take unscrolled (their layout's size hint)."""
        return self.scroll_area.widget().sizeHint().height()


class _FitWidth(QObject):
    """Keeps a vertically scrolling area at least as wide as its content needs (it has no horizontal scroll bar,
    so a narrower dock would cut the controls off on the right) and its content at its full height (a short dock
    scrolls instead of squeezing the controls): on every layout change of the content."""

    def __init__(self, scroll: QScrollArea) -> None:
        super().__init__(scroll)
        self.scroll = scroll

    def eventFilter(self, watched, event) -> bool:  # Qt override
        if event.type() == QEvent.Type.LayoutRequest:
            bar = self.scroll.verticalScrollBar().sizeHint().width()
            self.scroll.setMinimumWidth(watched.minimumSizeHint().width() + bar + 2)
            watched.setMinimumHeight(watched.sizeHint().height())  # scroll rather than squeeze the controls
        return False


class Section(Container):
    """Controls under a header button that folds them away (``folded``) and unfolds them again."""

    def __init__(self, title: str, widgets: Sequence[Widget], *, folded: bool = True, tooltip: str = "") -> None:
        super().__init__(labels=False)
        self.title = title
        self.header = PushButton(text=title, tooltip=tooltip or f"show or hide the {title.lower()} options")
        self.header.native.setFlat(True)
        self.header.native.setStyleSheet("text-align: left; font-weight: bold;")
        self.body = Container(labels=True, widgets=list(widgets))
        self.body.margins = (12, 0, 0, 0)
        self.margins = (0, 0, 0, 0)
        self.extend([self.header, self.body])
        self.header.changed.connect(self.toggle)
        self.folded = folded

    @property
    def folded(self) -> bool:
        return not self.body.visible

    @folded.setter
    def folded(self, folded: bool) -> None:
        self.body.visible = not folded
        self.header.text = f"{CLOSED if folded else OPEN} {self.title}"

    def toggle(self, *_) -> None:
        self.folded = not self.folded
