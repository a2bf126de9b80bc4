"""The models this session can segment with: shipped built-ins plus registered weight files (no Qt).

Widgets list ``entries()`` and listen with ``connect(callback)``; the fine-tune dock calls
``register(name, path)`` after saving, and every model picker shows the new model at once.
Call ``register``/``unregister`` from the main (GUI) thread: callbacks run synchronously in it.

Versions: each fine-tune run of the correction loop saves a new file (``next_version``: ``mito.safetensors``,
``mito-v2.safetensors``, ...; never over an earlier run's file) and registers it with its ``parent``; pickers follow
a new version of the model they show (``children``), and every earlier version stays choosable.
"""

from __future__ import annotations

import glob
import logging
import re
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
    ``kind`` (``builtin``, ``file`` = loaded by the user, ``session`` = fine-tuned in this session); a fine-tuned
    model's ``parent`` (the name of the model it started from) and ``version`` in its loop."""

    name: str
    source: str
    kind: str = "session"
    parent: str | None = None
    version: int | None = None


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


def register(name: str, path: str | Path, *, kind: str = "session", parent: str | None = None,
             version: int | None = None) -> ModelEntry:
    """Add (or replace) the model ``name`` stored in ``path`` and notify listeners; returns its entry."""
    if kind not in KINDS[1:]:
        raise ValueError(f"kind must be 'file' or 'session', got {kind!r}")
    if name in BUILTIN_NAMES:
        raise ValueError(f"{name!r} is a built-in model name; choose another name")
    entry = ModelEntry(str(name), str(Path(path).expanduser().resolve()), kind, parent, version)
    _registered.pop(entry.name, None)
    _registered[entry.name] = entry
    _notify()
    return entry


def register_path(path: str | Path, *, kind: str = "session", parent: str | None = None,
                  version: int | None = None) -> ModelEntry:
    """Register a weight file under a name derived from its file name: the name it already has when this file is
    registered, else its stem made unique (``stem (2)``, ...)."""
    path = Path(path).expanduser().resolve()
    for entry in _registered.values():
        if entry.source == str(path):
            return register(entry.name, path, kind=kind, parent=parent, version=version)
    name, n = path.stem, 2
    while name in BUILTIN_NAMES or name in _registered:
        name, n = f"{path.stem} ({n})", n + 1
    return register(name, path, kind=kind, parent=parent, version=version)


def children(name: str) -> list[ModelEntry]:
    """The registered models fine-tuned from ``name``, in registration order."""
    return [entry for entry in _registered.values() if entry.parent == name]


_VERSION = re.compile(r"^(?P<stem>.+?)-v(?P<n>[0-9]+)$")


def version_of(path: str | Path) -> tuple[str, int]:
    """(the loop's stem, version) of a weight file name: ``mito.safetensors`` is (mito, 1), ``mito-v3`` (mito, 3)."""
    stem = Path(path).stem
    match = _VERSION.match(stem)
    return (match["stem"], int(match["n"])) if match else (stem, 1)


def next_version(path: str | Path) -> tuple[Path, int]:
    """The file a new fine-tune run asked to save to ``path`` writes, and its version: ``path`` itself if no version
    of its loop exists in its folder, else ``<stem>-v<N>`` one past the highest (an earlier run's file is never
    replaced)."""
    path = Path(path)
    stem, _ = version_of(path)
    folder, suffix = path.parent, path.suffix or ".safetensors"
    taken = [version_of(p)[1] for p in folder.glob(f"{glob.escape(stem)}*{suffix}") if version_of(p)[0] == stem]
    if not taken and not path.exists():
        return path, version_of(path)[1]
    n = max([*taken, version_of(path)[1]]) + 1
    return folder / f"{stem}-v{n}{suffix}", n


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
