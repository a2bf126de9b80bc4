"""The napari manifest: valid, and naming our widgets, sample data and Layers > Segment menu entries."""

from __future__ import annotations

import importlib
from pathlib import Path

import npe2

import napari_alnet

MANIFEST = Path(napari_alnet.__file__).parent / "napari.yaml"


def test_manifest_is_valid_and_installed():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    installed = npe2.PluginManifest.from_distribution("napari-alnet")
    assert installed.name == manifest.name == "napari-alnet"
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert set(widgets) >= {"Segment (AL-Net)", "Batch segment (AL-Net)"}
    assert [s.key for s in manifest.contributions.sample_data] == ["em-like-stack"]
    menu = [item.command for item in manifest.contributions.menus["napari/layers/segment"]]
    assert {"napari-alnet.segment_widget", "napari-alnet.batch_widget"} <= set(menu)


def test_every_command_points_at_something_importable():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id
