"""The Qt-free model registry the pickers follow (and the fine-tune dock registers into): one per session, listeners
that a widget unsubscribes on its destruction."""

from __future__ import annotations

import gc
import os

import pytest

from napari_alnet.engine.registry import ModelRegistry, session_registry
from napari_alnet.io.pretrained import BUILTIN_NAMES
from napari_alnet.io.weights import ModelMetadata, save_weights
from napari_alnet.model import ALNet


@pytest.fixture
def weights(tmp_path):
    return save_weights(ALNet(), ModelMetadata(threshold=0.3, card={"summary": "mine"}), tmp_path / "mine.safetensors")


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry()


def names(registry: ModelRegistry) -> list[str]:
    return [e.name for e in registry.entries()]


def test_register_notifies_and_loads(registry, weights):
    seen = []
    listener = lambda: seen.append(names(registry))  # noqa: E731
    registry.connect(listener)
    entry = registry.register("mito", weights)
    assert entry.kind == "session" and seen[-1][-1] == "mito"
    model = registry.load("mito")
    assert model.network.is_reparameterized and not model.network.training
    assert registry.metadata("mito").summary == "mine"
    assert registry.load("mito") is model  # cached
    save_weights(ALNet(), ModelMetadata(threshold=0.7), weights)  # re-saved by a fine-tune: reloaded
    os.utime(weights, (1, 2e9))
    assert registry.load("mito") is not model
    assert registry.metadata("mito").threshold == pytest.approx(0.7)
    registry.unregister("mito")
    registry.disconnect(listener)
    registry.unregister("never registered")  # no change: nobody is told
    assert "mito" not in names(registry) and len(seen) == 2


def test_each_registry_is_its_own_session_and_the_docks_share_one(registry, weights):
    other = ModelRegistry()
    registry.register("mito", weights)
    assert "mito" in names(registry) and "mito" not in names(other)
    assert session_registry() is session_registry() and session_registry() is not registry
    assert "mito" not in names(session_registry())


def test_file_names_are_unique_and_builtins_protected(registry, weights, tmp_path):
    other = tmp_path / "sub"
    other.mkdir()
    second = save_weights(ALNet(), ModelMetadata(), other / "mine.safetensors")
    a = registry.register_file(weights)
    assert registry.register_file(weights) == a
    b = registry.register_file(second)
    assert (a.name, b.name) == ("mine", "mine (2)") and a.kind == b.kind == "file"
    with pytest.raises(ValueError, match="built-in"):
        registry.register(BUILTIN_NAMES[0], weights)
    with pytest.raises(ValueError, match="kind"):
        registry.register("x", weights, kind="builtin")
    with pytest.raises(KeyError, match="nope"):
        registry.get("nope")


def test_listeners_are_held_weakly_and_unsubscribe(registry, weights):
    class Listener:
        calls = 0

        def changed(self):
            Listener.calls += 1

    listener = Listener()
    registry.connect(listener.changed)
    del listener
    gc.collect()
    registry.register("weak", weights)
    assert Listener.calls == 0
    kept = Listener()
    unsubscribe = registry.connect(kept.changed)
    registry.unregister("weak")
    assert Listener.calls == 1
    unsubscribe()
    unsubscribe()  # twice is harmless (a widget's destroyed signal after an explicit unsubscribe)
    registry.register("weak", weights)
    assert Listener.calls == 1


def test_a_listeners_error_is_not_swallowed_by_the_core(registry, weights):
    def broken() -> None:
        raise RuntimeError("wrapped C/C++ object has been deleted")

    registry.connect(broken)
    with pytest.raises(RuntimeError, match="deleted"):
        registry.register("mito", weights)


def test_a_picker_unsubscribes_when_its_widget_is_destroyed(qtbot, registry, weights):
    from qtpy import sip

    from napari_alnet.widgets._models import ModelPicker

    picker = ModelPicker(registry=registry)
    registry.register("mito", weights)
    assert "mito" in picker.combo.choices  # the list follows the registry
    calls = []
    picker._refresh = lambda: calls.append(1)
    registry.register("mito-v2", weights, parent="mito", version=2)
    assert calls == [1]
    sip.delete(picker.combo.native)  # the dock closed: Qt deletes its widgets
    registry.register("mito-v3", weights, parent="mito", version=3)  # no call into a deleted widget
    assert calls == [1]


def test_cache_holds_each_device_its_own_segmenter(registry, weights, monkeypatch):
    """The per-device cache never hands out a model that another device's request moved."""
    from napari_alnet.engine import devices

    monkeypatch.setattr(devices, "available_devices", lambda: ["meta", "cpu"])
    registry.register("mito-devices", weights)
    on_cpu = registry.load("mito-devices", "cpu")
    on_meta = registry.load("mito-devices", "meta")
    assert on_meta is not on_cpu and on_meta.device.type == "meta"
    assert all(p.device.type == "meta" for p in on_meta.network.parameters())
    again = registry.load("mito-devices", "cpu")
    assert again is on_cpu and all(p.device.type == "cpu" for p in again.network.parameters())
