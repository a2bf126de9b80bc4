"""Does an image suit a model? The engine's judgement (engine/suitability.py) against the shipped cards'
training statistics, and the Segment dock's warning (and its absence on matching data)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import require_data
from napari_alnet.engine.registry import session_registry
from napari_alnet.engine.suitability import STATS_KEY, assess, image_statistics, suggest
from napari_alnet.io.sample_data import em_like_stack

BUILTINS = ("em", "fundus", "dermoscopy")


def card(name: str):
    return session_registry().metadata(name)


def builtins():
    return {name: card(name) for name in BUILTINS}


def fundus_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A colour photo like a fundus image: a dark surround and a red-orange disc with darker vessels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    image = np.zeros((size, size, 3), np.float64)
    image[disc] = (170, 88, 40)
    image[disc & (np.abs(np.sin(xx / 9.0)) < 0.08)] *= 0.6
    return np.clip(image + rng.normal(0, 6, image.shape) * disc[..., None], 0, 255).astype(np.uint8)


def fluorescence_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A gray image like fluorescence: a dark background with a few small bright nuclei."""
    rng = np.random.default_rng(seed)
    image = rng.normal(12, 2, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for y, x in rng.integers(10, size - 10, (12, 2)):
        image[(yy - y) ** 2 + (xx - x) ** 2 < 36] = 200
    return np.clip(image, 0, 255).astype(np.uint8)


def test_shipped_cards_record_their_training_statistics():
    for name in BUILTINS:
        entry = card(name).card[STATS_KEY]
        assert entry["channels"] == card(name).in_channels
        assert entry["percentiles"]["p1"] <= entry["percentiles"]["p50"] <= entry["percentiles"]["p99"]
        spread = entry["median_position"]
        assert 0 <= spread["min"] <= spread["p5"] <= spread["p50"] <= spread["p95"] <= spread["max"] <= 1
        assert entry["images"] > 0 and entry["source"]
    assert card("em").card[STATS_KEY]["pixel_size_nm"] == 4.0


def test_colour_image_into_a_gray_model_is_flagged_and_a_colour_model_suggested():
    stats = image_statistics(fundus_like(), rgb=True)
    problems = assess(stats, card("em"))
    assert problems and "colour" in problems[0]
    assert suggest(stats, builtins(), besides="em") == "fundus"
    assert assess(stats, card("fundus")) == []
    assert any("colours" in problem for problem in assess(stats, card("dermoscopy")))  # red, not skin


def test_matching_data_gives_no_warning():
    stack = em_like_stack(depth=2, size=256, seed=3)[0]
    assert assess(image_statistics(stack[0], rgb=False, pixel_size_nm=4.0), card("em")) == []
    assert assess(image_statistics(stack, rgb=False), card("em")) == []  # a stack, unknown pixel size
    sample = em_like_stack(depth=1, size=384, cells=50, seed=3)[0]  # brighter cells than ISBI's: still EM
    assert assess(image_statistics(sample, rgb=False), card("em")) == []


def test_intensities_and_pixel_size_far_from_training_are_flagged():
    problems = assess(image_statistics(fluorescence_like(), rgb=False), card("em"))
    assert len(problems) == 1 and "intensities" in problems[0]
    em = em_like_stack(depth=1, size=256, seed=3)[0][0]
    far = assess(image_statistics(em, rgb=False, pixel_size_nm=40.0), card("em"))
    assert len(far) == 1 and "pixel size" in far[0] and "40 nm" in far[0]
    assert assess(image_statistics(em, rgb=False, pixel_size_nm=5.0), card("em")) == []
    gray = assess(image_statistics(em, rgb=False), card("fundus"))
    assert gray and "gray" in gray[0]


def test_real_test_images_suit_their_own_model_and_not_the_others():
    """Test splits (never trained on) of each dataset: no warning for the model trained on that kind of data."""
    data = require_data("isbi2012").parent
    require_data("stare"), require_data("isic2018")
    isbi = np.asarray(PILImage.open(data / "isbi2012/test/images/25.png"))
    stare = np.asarray(PILImage.open(data / "stare/images/im0239.png"))
    val = next(r["name"] for r in csv.DictReader((data / "isic2018/split.csv").open())
               if r["subset_in_source_repo"] == "val")
    isic = np.asarray(PILImage.open(data / f"isic2018/images/{val}.jpg"))
    assert assess(image_statistics(isbi, rgb=False, pixel_size_nm=4.0), card("em")) == []
    assert assess(image_statistics(stare, rgb=True), card("fundus")) == []
    assert assess(image_statistics(isic, rgb=True), card("dermoscopy")) == []
    fundus_photo = image_statistics(stare, rgb=True)
    assert assess(fundus_photo, card("em")) and suggest(fundus_photo, builtins(), besides="em") == "fundus"


@pytest.mark.gui
def test_segment_dock_warns_on_unlike_data_and_not_on_matching_data(make_napari_viewer, qtbot):
    from napari_alnet.widgets import SegmentWidget

    viewer = make_napari_viewer()
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    viewer.add_image(em_like_stack(depth=2, size=128, seed=1)[0], name="em stack")
    dock.models.select("em")
    assert dock.image.value.name == "em stack"
    assert dock.fit.problems == [] and dock.fit.label.native.isHidden() and dock.fit.button.native.isHidden()
    viewer.add_image(fundus_like(), name="fundus photo", rgb=True)
    assert dock.image.value.name == "fundus photo"  # a newly added image is chosen
    assert not dock.fit.label.native.isHidden() and "colour" in dock.fit.label.value
    assert "'fundus'" in dock.fit.label.value and not dock.fit.button.native.isHidden()
    dock.fit.button.changed.emit(True)  # 'Use fundus'
    assert dock.models.value == "fundus" and dock.fit.label.native.isHidden()
    viewer.layers.selection.active = viewer.layers["em stack"]
    assert dock.image.value.name == "em stack"
    assert "gray" in dock.fit.label.value  # a gray stack for the colour model: warned, not refused
    assert dock.run_button.enabled
