"""The Qt-free session model registry the pickers follow (and the fine-tune dock registers into)."""

from __future__ import annotations

import gc
import os

import pytest

from napari_alnet.engine import registry as model_registry
from napari_alnet.io.pretrained import BUILTIN_NAMES
from napari_alnet.io.weights import ModelMetadata, save_weights
from napari_alnet.model import ALNet


@pytest.fixture
def weights(tmp_path):
    return save_weights(ALNet(), ModelMetadata(threshold=0.3, card={"summary": "mine"}), tmp_path / "mine.safetensors")


def test_register_notifies_and_loads(weights):
    seen = []
    listener = lambda: seen.append([e.name for e in model_registry.entries()])  # noqa: E731
    model_registry.connect(listener)
    try:
        entry = model_registry.register("mito", weights)
        assert entry.kind == "session" and seen[-1][-1] == "mito"
        model = model_registry.load("mito")
        assert model.network.is_reparameterized and not model.network.training
        assert model_registry.metadata("mito").summary == "mine"
        assert model_registry.load("mito") is model  # cached
        save_weights(ALNet(), ModelMetadata(threshold=0.7), weights)  # re-saved by a fine-tune: reloaded
        os.utime(weights, (1, 2e9))
        assert model_registry.load("mito") is not model
        assert model_registry.metadata("mito").threshold == pytest.approx(0.7)
    finally:
        model_registry.unregister("mito")
        model_registry.disconnect(listener)
    assert "mito" not in [e.name for e in model_registry.entries()]
    assert len(seen) == 2


def test_file_names_are_unique_and_builtins_protected(weights, tmp_path):
    other = tmp_path / "sub"
    other.mkdir()
    second = save_weights(ALNet(), ModelMetadata(), other / "mine.safetensors")
    try:
        a = model_registry.register_file(weights)
        assert model_registry.register_file(weights) == a
        b = model_registry.register_file(second)
        assert (a.name, b.name) == ("mine", "mine (2)") and a.kind == b.kind == "file"
        with pytest.raises(ValueError, match="built-in"):
            model_registry.register(BUILTIN_NAMES[0], weights)
        with pytest.raises(KeyError):
            model_registry.get("nope")
    finally:
        model_registry.unregister("mine")
        model_registry.unregister("mine (2)")


def test_listeners_are_held_weakly(weights):
    class Listener:
        calls = 0

        def changed(self):
            Listener.calls += 1

    listener = Listener()
    model_registry.connect(listener.changed)
    del listener
    gc.collect()
    try:
        model_registry.register("weak", weights)
    finally:
        model_registry.unregister("weak")
    assert Listener.calls == 0


def test_cache_holds_each_device_its_own_segmenter(weights, monkeypatch):
    """The per-device cache never hands out a model that another device's request moved."""
    from napari_alnet.engine import devices

    monkeypatch.setattr(devices, "available_devices", lambda: ["meta", "cpu"])
    model_registry.register("mito-devices", weights)
    try:
        on_cpu = model_registry.load("mito-devices", "cpu")
        on_meta = model_registry.load("mito-devices", "meta")
        assert on_meta is not on_cpu and on_meta.device.type == "meta"
        assert all(p.device.type == "meta" for p in on_meta.network.parameters())
        again = model_registry.load("mito-devices", "cpu")
        assert again is on_cpu and all(p.device.type == "cpu" for p in again.network.parameters())
    finally:
        model_registry.unregister("mito-devices")
