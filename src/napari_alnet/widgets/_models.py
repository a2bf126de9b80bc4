"""Model and device pickers shared by the widgets; the list follows a ``ModelRegistry`` (the session's by default).

A picker subscribes to its registry and unsubscribes when its Qt widget is destroyed (the registry itself knows no Qt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import ComboBox, Label, PushButton
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt

from ..engine.devices import available_devices
from ..engine.registry import ModelEntry, ModelRegistry, session_registry
from ..engine.segmenter import Segmenter
from ..engine.suitability import ImageStatistics, advice, assess, suggest
from ..io.weights import WeightsError, read_weights
from ..model.metadata import ModelMetadata

log = logging.getLogger(__name__)

LOAD = "Load weights…"


def device_picker() -> ComboBox:
    """'auto' plus the devices available here."""
    return ComboBox(label="Device", choices=["auto", *available_devices()], value="auto",
                    tooltip="where the network runs: auto picks a CUDA GPU, then Apple's mps, then the CPU")


def tile_picker() -> ComboBox:
    """Tile edge for big images: automatic, or one of the sizes the tiler accepts (>= its minimum)."""
    sizes = [1024, 1536, 2048, 3072]
    return ComboBox(label="Tile size", choices=[("automatic", 0)] + [(f"{s} px", s) for s in sizes], value=0,
                    tooltip="big images are segmented in overlapping tiles (the seams do not show). automatic: the "
                            "whole image up to 2048 x 2048, tiles of 1536 beyond; choose smaller tiles if memory runs "
                            "out")


class ModelPicker:
    """A model ``combo`` (shipped built-ins, loaded files, session fine-tunes, 'Load weights…') and a
    ``summary`` label with the model card's one-line summary and what its label 1 means. Add both widgets to a
    container. When a new version of the chosen model is registered (a fine-tune of it), the picker moves to it;
    earlier versions stay in the list.

    ``on_change(callback)`` calls ``callback(name, metadata)`` when the choice changes to a usable model.
    ``registry``: whose models it lists (default: the session's, shared by the plugin's docks).
    """

    def __init__(self, label: str = "Model", *, registry: ModelRegistry | None = None) -> None:
        self.registry = registry if registry is not None else session_registry()
        self.combo = ComboBox(label=label, choices=self._choices, tooltip="the trained network: built-in models "
                              "(em: electron microscopy membranes; fundus: retinal vessels; dermoscopy: skin "
                              "lesions), weight files you loaded ('Load weights…') and models fine-tuned in this "
                              "session")
        self.summary = Label(value="", tooltip="what the chosen model was trained on")
        self.summary.native.setWordWrap(True)
        self.summary.native.setAlignment(Qt.AlignmentFlag.AlignLeft)
        self._listeners: list[Callable[[str, ModelMetadata], None]] = []
        self._previous: str | None = self.combo.value
        self._seen = {entry.name for entry in self.registry.entries()}
        self._refreshing = False
        self.combo.changed.connect(self._on_combo)
        self._unsubscribe = self.registry.connect(self.refresh)
        self.combo.native.destroyed.connect(self._unsubscribe)
        self._describe(self.combo.value)

    @property
    def value(self) -> str | None:
        """The chosen model's registry name (None if no model is available yet)."""
        value = self.combo.value
        return None if value == LOAD else value

    def on_change(self, callback: Callable[[str, ModelMetadata], None]) -> None:
        self._listeners.append(callback)

    def select(self, name: str) -> None:
        """Choose the model ``name`` (a registry entry)."""
        self.refresh()
        self.combo.value = name

    def load_file(self, path: str | Path) -> str:
        """Check ``path`` is an AL-Net weight file, register it and choose it; returns its name."""
        read_weights(path)  # raises WeightsError with a clear message
        name = self.registry.register_file(path).name
        self.select(name)
        return name

    def load(self, device: str | None = None) -> Segmenter:
        """The chosen model's ``Segmenter`` on ``device`` (WeightsError/ValueError if unusable)."""
        if self.value is None:
            raise WeightsError("no model chosen: pick one in 'Model' or use 'Load weights…' to open a "
                               ".safetensors weight file")
        return self.registry.load(self.value, device)

    def refresh(self) -> None:
        """Re-read the registry (called by it on every change); follow a new version of the chosen model."""
        try:
            self._refresh()
        except RuntimeError as exc:  # the Qt widget went without its destroyed signal: stop listening
            if "deleted" not in str(exc):
                raise
            log.debug("model picker of a deleted widget stops listening", exc_info=True)
            self._unsubscribe()

    def _refresh(self) -> None:
        self._refreshing = True
        try:
            self.combo.reset_choices()
            newer = [e.name for e in self.registry.children(self._previous or "") if e.name not in self._seen]
            if newer:
                self.combo.value = newer[-1]
            self._seen = {entry.name for entry in self.registry.entries()}
        finally:
            self._refreshing = False
        if self.combo.value != self._previous:
            self._on_combo(self.combo.value)
        else:  # same name, maybe a re-saved file: refresh its summary
            self._describe(self.combo.value)

    def _choices(self, _widget=None) -> list[tuple[str, str | None]]:
        entries = self.registry.entries()
        choices: list[tuple[str, str | None]] = [(_label(e), e.name) for e in entries]
        if not entries:
            choices.append(("(no model yet)", None))
        return [*choices, (LOAD, LOAD)]

    def _on_combo(self, value: str | None) -> None:
        if self._refreshing:
            return
        if value == LOAD:
            self._ask_file()
            return
        self._previous = value
        meta = self._describe(value)
        if meta is not None:
            for callback in self._listeners:
                callback(value, meta)

    def _ask_file(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(None, "Load AL-Net weights", "", "AL-Net weights (*.safetensors)")
        if path:
            try:
                self.load_file(path)
                return
            except WeightsError as exc:
                show_error(f"Load weights: {exc}")
        self.combo.value = self._previous  # dialog cancelled or file refused: back to the previous choice

    def _describe(self, name: str | None) -> ModelMetadata | None:
        if name is None or name == LOAD:
            self.summary.value = "no model: choose 'Load weights…' to open a .safetensors file"
            return None
        try:
            meta = self.registry.metadata(name)
        except (WeightsError, ValueError, KeyError, OSError) as exc:
            self.summary.value = f"unusable: {exc}"
            return None
        foreground = meta.card.get("foreground")
        said = f"label 1 = {foreground}" in meta.summary  # a fine-tune's card summary already says it
        text = f"{meta.summary} · label 1 = {foreground}" if foreground and not said else meta.summary
        self.summary.value = text
        self.summary.tooltip = text
        return meta


def _label(entry: ModelEntry) -> str:
    if entry.parent is not None:
        return f"{entry.name} (v{entry.version or '?'}, fine-tuned from {entry.parent})"
    return {"builtin": f"{entry.name} (built-in)", "file": entry.name,
            "session": f"{entry.name} (fine-tuned)"}[entry.kind]


class FitNote:
    """A warning (``label``) when the image looks unlike the model's training data, naming a better suited model
    that ``button`` switches to; both hidden when the image suits the model. Add both widgets to a container."""

    def __init__(self, picker: ModelPicker) -> None:
        self.picker = picker
        self.label = Label(value="", tooltip="compares the image (gray or colour, intensities, pixel size) with the "
                                             "model card's statistics of its training images")
        self.label.native.setWordWrap(True)
        self.label.native.setStyleSheet("color: #f0b040;")
        self.button = PushButton(text="Use the suggested model",
                                 tooltip="switch 'Model' to the model this image suits better")
        self.button.changed.connect(self._use)
        self.problems: list[str] = []
        self.suggestion: str | None = None
        self._show("")

    def update(self, stats: ImageStatistics | None, name: str | None) -> list[str]:
        """Judge the image ``stats`` against model ``name``; returns what differs (shown in ``label``)."""
        self.problems, self.suggestion = [], None
        registry = self.picker.registry
        meta = _metadata(registry, name) if stats is not None and name is not None else None
        if meta is not None:
            self.problems = assess(stats, meta)
        if self.problems:
            models = {e.name: m for e in registry.entries() if (m := _metadata(registry, e.name)) is not None}
            self.suggestion = suggest(stats, models, besides=name)
        self._show(advice(name, self.problems, self.suggestion) if self.problems else "")
        return self.problems

    def _show(self, text: str) -> None:
        self.label.value = f"⚠ {text}" if text else ""
        self.label.visible = bool(text)
        self.button.visible = self.suggestion is not None
        if self.suggestion is not None:
            self.button.text = f"Use '{self.suggestion}'"

    def _use(self, *_) -> None:
        if self.suggestion is not None:
            self.picker.select(self.suggestion)


def _metadata(registry: ModelRegistry, name: str) -> ModelMetadata | None:
    try:
        return registry.metadata(name)
    except (WeightsError, ValueError, KeyError, OSError):
        return None
