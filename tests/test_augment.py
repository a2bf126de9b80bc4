"""Rotation, zoom and intensity augmentation of training crops."""

from __future__ import annotations

import numpy as np
import pytest

from napari_alnet import load_model
from napari_alnet.cli import main as cli_main
from napari_alnet.training import pairs_from_arrays
from napari_alnet.training.augment import Augmentation
from napari_alnet.training.data import CropSampler


def _stripes(size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    mask = ((xx // 9) % 3 == 0) | ((yy // 13) % 4 == 0)
    return np.where(mask, 220, 30).astype(np.uint8), mask


def test_without_options_crops_are_the_papers_translations_and_flips():
    aug = Augmentation()
    assert not aug.geometric and aug.window(64) == 64
    image, mask = _stripes()
    pairs = pairs_from_arrays([image], [mask])
    a = CropSampler(pairs, 64, np.random.default_rng(5)).batch(3)
    b = CropSampler(pairs, 64, np.random.default_rng(5), Augmentation()).batch(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_rotated_zoomed_crops_keep_image_and_mask_aligned():
    image, mask = _stripes()
    pairs = pairs_from_arrays([image], [mask])
    sampler = CropSampler(pairs, 64, np.random.default_rng(0), Augmentation(rotate=True, zoom=1.3))
    assert sampler.augmentation.window(64) == int(np.ceil(64 * 1.3 * np.sqrt(2))) + 2
    images, masks, ignores = sampler.batch(16)
    assert images.shape == (16, 1, 64, 64) and masks.shape == ignores.shape == (16, 64, 64)
    assert not ignores.any()  # the window holds every rotated crop: nothing comes from outside the image
    bright = images[:, 0] > images[:, 0].mean()
    agreement = (bright == (masks > 0.5)).mean()
    assert agreement > 0.97  # only bilinear edge pixels may differ
    plain = CropSampler(pairs, 64, np.random.default_rng(0)).batch(16)[1]
    # random angles make stripe directions differ from the axis-aligned ones of plain crops
    row_runs = lambda m: np.abs(np.diff(m, axis=-1)).mean()  # noqa: E731
    assert row_runs(masks) != pytest.approx(row_runs(plain), rel=0.05)


def test_rotated_crops_keep_one_pixel_lines_as_soft_labels():
    yy, xx = np.mgrid[:300, :300]
    lines = (xx % 8 == 0) | (yy % 8 == 0)  # 1-px lines: density 15/64
    pairs = pairs_from_arrays([lines.astype(np.uint8) * 200], [lines])
    _, masks, _ = CropSampler(pairs, 64, np.random.default_rng(4), Augmentation(rotate=True)).batch(32)
    assert masks.min() >= 0 and masks.max() <= 1 and ((masks > 0) & (masks < 1)).any()
    assert masks.mean() == pytest.approx(15 / 64, rel=0.03)  # thresholding would lose most of the lines


def test_small_images_are_padded_for_the_window_and_the_padding_ignored():
    image, mask = _stripes(40)
    sampler = CropSampler(pairs_from_arrays([image], [mask]), 32, np.random.default_rng(1),
                          Augmentation(rotate=True, zoom=1.5))
    _, _, ignores = sampler.batch(8)
    assert ignores.any() and not ignores.all()
    tiny = pairs_from_arrays([image[:20, :15]], [mask[:20, :15]])  # far smaller than the 138-px window
    _, _, ignores = CropSampler(tiny, 64, np.random.default_rng(1), Augmentation(rotate=True, zoom=1.5)).batch(8)
    assert all((~ig).sum() > 100 for ig in ignores)  # every crop still sees the image


def test_intensity_jitter_changes_the_image_only_and_is_bounded():
    image, mask = _stripes()
    pairs = pairs_from_arrays([image], [mask])
    plain = CropSampler(pairs, 64, np.random.default_rng(2)).sample()
    jittered = CropSampler(pairs, 64, np.random.default_rng(2), Augmentation(intensity=0.2)).sample()
    assert np.array_equal(plain[1], jittered[1]) and np.array_equal(plain[2], jittered[2])
    assert not np.allclose(plain[0], jittered[0])
    rgb = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    rng = np.random.default_rng(3)
    for _ in range(20):
        out = Augmentation(intensity=0.2).jitter(rgb, rng)
        gain = out.std(axis=(1, 2)) / rgb.std(axis=(1, 2))
        shift = out.mean(axis=(1, 2)) - rgb.mean(axis=(1, 2))
        assert np.all((gain > np.exp(-0.3) - 1e-5) & (gain < np.exp(0.3) + 1e-5)) and np.all(np.abs(shift) <= 0.2)


@pytest.mark.parametrize("kwargs", [{"zoom": 0.8}, {"intensity": -0.1}])
def test_invalid_augmentation_is_refused(kwargs):
    with pytest.raises(ValueError, match=r"zoom must be|intensity jitter must be"):
        Augmentation(**kwargs)


def test_cli_augmentation_options_reach_the_model_card(tmp_path, capsys):
    from skimage.io import imsave

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image, mask = _stripes(96)
    for i in range(2):
        imsave(tmp_path / "images" / f"{i}.png", np.roll(image, 7 * i, axis=1), check_contrast=False)
        imsave(tmp_path / "masks" / f"{i}.png", np.roll(mask, 7 * i, axis=1).astype(np.uint8) * 255,
               check_contrast=False)
    common = ["train", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"), "--holdout", "1",
              "--epochs", "1", "--steps-per-epoch", "2", "--crop", "48"]
    out = tmp_path / "aug.safetensors"
    assert cli_main([*common, "--rotate", "--zoom", "1.2", "--intensity-jitter", "0.1", "--out", str(out)]) == 0
    recipe = load_model(out).metadata.card["training"]["recipe"]
    assert (recipe["rotate"], recipe["zoom"], recipe["intensity_jitter"]) == (True, 1.2, 0.1)
    with pytest.raises(SystemExit) as stop:  # refused as the flag is read (engine.arguments)
        cli_main([*common, "--zoom", "0.5", "--out", str(tmp_path / "bad.safetensors")])
    assert stop.value.code == 2 and "argument --zoom: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
