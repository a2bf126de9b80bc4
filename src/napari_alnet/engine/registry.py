"""The models this session can segment with: shipped built-ins plus registered weight files (no Qt).

Widgets list ``entries()`` and listen with ``connect(callback)``; the fine-tune dock calls
``register(name, path)`` after saving, and every model picker shows the new model at once.
Call ``register``/``unregister`` from the main (GUI) thread: callbacks run synchronously in it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..io.pretrained import BUILTIN_NAMES, shipped_models
from ..model.metadata import ModelMetadata
from .devices import resolve_device
from .segmenter import Segmenter

log = logging.getLogger(__name__)

KINDS = ("builtin", "file", "session")


@dataclass(frozen=True)
class ModelEntry:
    """One choosable model: ``name`` (unique, shown in pickers), ``source`` (built-in name or weight file path),
    ``kind`` (``builtin``, ``file`` = loaded by the user, ``session`` = fine-tuned in this session)."""

    name: str
    source: str
    kind: str = "session"


_registered: dict[str, ModelEntry] = {}
_callbacks: list[Callable[[], Callable[[], None] | None]] = []
_models: dict[tuple[str, float, str], Segmenter] = {}
_lock = threading.Lock()


def entries() -> list[ModelEntry]:
    """Shipped built-ins (in ``BUILTIN_NAMES`` order) then registered models (in registration order)."""
    builtins = [ModelEntry(name, name, "builtin") for name in shipped_models()]
    return builtins + list(_registered.values())


def get(name: str) -> ModelEntry:
    """The entry called ``name``; ``KeyError`` if there is none."""
    for entry in entries():
        if entry.name == name:
            return entry
    raise KeyError(f"no model called {name!r} (known: {', '.join(e.name for e in entries()) or 'none'})")


def register(name: str, path: str | Path, *, kind: str = "session") -> ModelEntry:
    """Add (or replace) the model ``name`` stored in ``path`` and notify listeners; returns its entry."""
    if kind not in KINDS[1:]:
        raise ValueError(f"kind must be 'file' or 'session', got {kind!r}")
    if name in BUILTIN_NAMES:
        raise ValueError(f"{name!r} is a built-in model name; choose another name")
    entry = ModelEntry(str(name), str(Path(path).expanduser().resolve()), kind)
    _registered.pop(entry.name, None)
    _registered[entry.name] = entry
    _notify()
    return entry


def register_path(path: str | Path, *, kind: str = "session") -> ModelEntry:
    """Register a weight file under a name derived from its file name: the name it already has when this file is
    registered, else its stem made unique (``stem (2)``, ...)."""
    path = Path(path).expanduser().resolve()
    for entry in _registered.values():
        if entry.source == str(path):
            return register(entry.name, path, kind=kind)
    name, n = path.stem, 2
    while name in BUILTIN_NAMES or name in _registered:
        name, n = f"{path.stem} ({n})", n + 1
    return register(name, path, kind=kind)


def register_file(path: str | Path) -> ModelEntry:
    """Register a user-chosen weight file (``kind='file'``); see ``register_path``."""
    return register_path(path, kind="file")


def unregister(name: str) -> None:
    """Forget a registered model (built-ins cannot be removed)."""
    if _registered.pop(name, None) is not None:
        _notify()


def connect(callback: Callable[[], None]) -> None:
    """Call ``callback()`` whenever the list changes (bound methods are held weakly)."""
    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
    _callbacks.append(ref)


def disconnect(callback: Callable[[], None]) -> None:
    _callbacks[:] = [ref for ref in _callbacks if ref() not in (None, callback)]


def _notify() -> None:
    for ref in list(_callbacks):
        callback = ref()
        if callback is None:
            _callbacks.remove(ref)
            continue
        try:
            callback()
        except RuntimeError:  # a deleted Qt widget: drop it
            log.debug("dropping model-registry listener %r", callback, exc_info=True)
            _callbacks.remove(ref)


def _key(entry: ModelEntry, device: str | None) -> tuple[str, float, str]:
    path = Path(entry.source)
    mtime = path.stat().st_mtime if entry.kind != "builtin" and path.is_file() else 0.0
    return entry.source, mtime, str(resolve_device(device))


def load(name: str, device: str | None = None) -> Segmenter:
    """The ``Segmenter`` of model ``name`` on ``device`` (cached per device; a re-saved file is reloaded)."""
    entry = get(name)
    key = _key(entry, device)
    with _lock:
        model = _models.get(key)
        if model is None:
            model = Segmenter.load(entry.source, device=key[2])
            for old in [k for k in _models if k[0] == key[0] and k[2] == key[2]]:
                del _models[old]
            _models[key] = model
        return model


def metadata(name: str) -> ModelMetadata:
    """The metadata of model ``name`` (loads it on the best device, cached)."""
    return load(name).metadata
