"""The models a session can segment with: shipped built-ins plus registered weight files (no Qt).

A ``ModelRegistry`` holds one session's models; the plugin's docks share ``session_registry()``. Widgets list
``entries()`` and listen with ``connect(callback)`` (which returns the call that unsubscribes: a widget makes it on
its destruction); the fine-tune dock calls ``register(name, path)`` after saving, and every model picker shows the new
model at once. Call ``register``/``unregister`` from the main (GUI) thread: callbacks run synchronously in it.

Versions: each fine-tune run of the correction loop saves a new file (``next_version``: ``mito.safetensors``,
``mito-v2.safetensors``, ...; never over an earlier run's file) and registers it with its ``parent``; pickers follow
a new version of the model they show (``children``), and every earlier version stays choosable.
"""

from __future__ import annotations

import functools
import glob
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


Listener = Callable[[], None]


class ModelRegistry:
    """One session's choosable models (built-ins, then registered ones in registration order), its listeners and
    its loaded ``Segmenter``s (one per weight file and device; a re-saved file is reloaded)."""

    def __init__(self) -> None:
        self._registered: dict[str, ModelEntry] = {}
        self._callbacks: list[Callable[[], Listener | None]] = []
        self._models: dict[tuple[str, float, str], Segmenter] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[ModelEntry]:
        """Shipped built-ins (in ``BUILTIN_NAMES`` order) then registered models (in registration order)."""
        builtins = [ModelEntry(name, name, "builtin") for name in shipped_models()]
        return builtins + list(self._registered.values())

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; ``KeyError`` if there is none."""
        for entry in self.entries():
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries()) or "none"
        raise KeyError(f"no model called {name!r} (known: {known})")

    def register(self, name: str, path: str | Path, *, kind: str = "session", parent: str | None = None,
                 version: int | None = None) -> ModelEntry:
        """Add (or replace) the model ``name`` stored in ``path`` and notify listeners; returns its entry."""
        if kind not in KINDS[1:]:
            raise ValueError(f"kind must be 'file' or 'session', got {kind!r}")
        if name in BUILTIN_NAMES:
            raise ValueError(f"{name!r} is a built-in model name; choose another name")
        entry = ModelEntry(str(name), str(Path(path).expanduser().resolve()), kind, parent, version)
        self._registered.pop(entry.name, None)
        self._registered[entry.name] = entry
        self._notify()
        return entry

    def register_path(self, path: str | Path, *, kind: str = "session", parent: str | None = None,
                      version: int | None = None) -> ModelEntry:
        """Register a weight file under a name derived from its file name: the name it already has when this file
        is registered, else its stem made unique (``stem (2)``, ...)."""
        path = Path(path).expanduser().resolve()
        for entry in self._registered.values():
            if entry.source == str(path):
                return self.register(entry.name, path, kind=kind, parent=parent, version=version)
        name, n = path.stem, 2
        while name in BUILTIN_NAMES or name in self._registered:
            name, n = f"{path.stem} ({n})", n + 1
        return self.register(name, path, kind=kind, parent=parent, version=version)

    def register_file(self, path: str | Path) -> ModelEntry:
        """Register a user-chosen weight file (``kind='file'``); see ``register_path``."""
        return self.register_path(path, kind="file")

    def unregister(self, name: str) -> None:
        """Forget a registered model (built-ins cannot be removed)."""
        if self._registered.pop(name, None) is not None:
            self._notify()

    def children(self, name: str) -> list[ModelEntry]:
        """The registered models fine-tuned from ``name``, in registration order."""
        return [entry for entry in self._registered.values() if entry.parent == name]

    def connect(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback()`` whenever the list changes (bound methods are held weakly); returns the call that
        unsubscribes it (it holds ``callback`` weakly too, so a widget can make it on its destruction)."""
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
        self._callbacks.append(ref)

        def unsubscribe(*_) -> None:
            if ref in self._callbacks:
                self._callbacks.remove(ref)

        return unsubscribe

    def disconnect(self, callback: Listener) -> None:
        """Stop calling ``callback`` (and drop listeners already collected)."""
        self._callbacks[:] = [ref for ref in self._callbacks if ref() not in (None, callback)]

    def _notify(self) -> None:
        """Call every listener; a listener's error propagates (a widget unsubscribes before it is destroyed)."""
        for ref in list(self._callbacks):
            callback = ref()
            if callback is None:
                self._callbacks.remove(ref)
            else:
                callback()

    def load(self, name: str, device: str | None = None) -> Segmenter:
        """The ``Segmenter`` of model ``name`` on ``device`` (cached per device; a re-saved file is reloaded)."""
        entry = self.get(name)
        key = _key(entry, device)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = Segmenter.load(entry.source, device=key[2])
                for old in [k for k in self._models if k[0] == key[0] and k[2] == key[2]]:
                    del self._models[old]
                self._models[key] = model
            return model

    def metadata(self, name: str) -> ModelMetadata:
        """The metadata of model ``name`` (loads it on the best device, cached)."""
        return self.load(name).metadata


@functools.cache
def session_registry() -> ModelRegistry:
    """The registry the plugin's docks share in this process (made on first use)."""
    return ModelRegistry()


def _key(entry: ModelEntry, device: str | None) -> tuple[str, float, str]:
    path = Path(entry.source)
    mtime = path.stat().st_mtime if entry.kind != "builtin" and path.is_file() else 0.0
    return entry.source, mtime, str(resolve_device(device))


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
