"""Colours as the user sees them (issue 25, item 3): every colour model Pillow or tifffile hands us is decoded to
what a viewer shows, or refused by name; an image whose channels are all equal gives exactly the gray image's
result."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_alnet.engine.normalization import as_gray, model_input, to_channels
from napari_alnet.io.images import PIL_MODES, ImageReadError
from napari_alnet.io.stack_reader import read_image
from napari_alnet.model import ALNetConfig
from napari_alnet.model.metadata import ModelMetadata, Normalization

RNG = np.random.default_rng(5)
RGB8 = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _viewer(image: Image.Image) -> np.ndarray:
    """What an image viewer shows of a Pillow image: its RGB (or its gray values for a one-channel model)."""
    gray = image.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
    return np.asarray(image.convert("L") if image.mode in ("LA", "La") else image if gray else image.convert("RGB"))


@settings(max_examples=30, deadline=None)
@given(mode=st.sampled_from(["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "HSV", "I;16", "I", "F"]),
       fmt=st.sampled_from(["png", "jpg", "tif"]))
def test_every_pillow_colour_model_reads_as_a_viewer_shows_it(tmp_path_factory, mode, fmt):
    image = Image.fromarray(RGB8).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray(RGB8[..., 0].astype(np.uint16) * 250).convert(mode)
    path = tmp_path_factory.mktemp("colour") / f"image.{fmt}"
    try:
        image.save(path)
    except (OSError, KeyError, ValueError):
        return  # this format cannot store this model: nothing to read
    with Image.open(path) as stored:
        shown, kind = _viewer(stored), stored.mode
    if fmt == "tif" and kind in ("YCbCr", "HSV", "LA", "PA", "P"):
        return  # Pillow's TIFF writer: covered by the tifffile cases below
    pixels = read_image(path)
    if kind == "RGBA":
        pixels = pixels[..., :3]  # alpha is ignored, as everywhere
    np.testing.assert_array_equal(pixels, shown)


def test_a_cmyk_jpeg_keeps_its_black():
    """The reported case: black ink must darken the image (it was read as RGBA and the K channel dropped)."""
    import io

    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8, 3] = 255  # left half: full black ink; right half: no ink (white paper)
    buffer = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buffer, "JPEG", quality=95)
    path = _written("cmyk.jpg", buffer.getvalue())
    rgb = read_image(path)
    assert rgb.shape == (16, 16, 3)
    assert rgb[:, :6].max() < 20 and rgb[:, 10:].min() > 235


def _written(name: str, data: bytes):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / name
    path.write_bytes(data)
    return path


@settings(max_examples=20, deadline=None)
@given(dtype=st.sampled_from([np.uint8, np.uint16]), seed=st.integers(0, 100))
def test_tiff_photometric_models_read_as_a_viewer_shows_them(tmp_path_factory, dtype, seed):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    folder = tmp_path_factory.mktemp("tiff")
    values = rng.integers(0, top, (12, 16), dtype=dtype, endpoint=True)
    tifffile.imwrite(folder / "white.tif", values, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(folder / "white.tif"), top - values)
    cmyk = rng.integers(0, top, (12, 16, 4), dtype=dtype, endpoint=True)
    tifffile.imwrite(folder / "cmyk.tif", cmyk, photometric="separated")
    white = top - cmyk.astype(np.float64)
    expected = np.round(white[..., :3] * white[..., 3:] / top)
    np.testing.assert_allclose(read_image(folder / "cmyk.tif"), expected, atol=1)
    if dtype == np.uint8:
        colormap = rng.integers(0, 65535, (3, 256), dtype=np.uint16, endpoint=True)
        tifffile.imwrite(folder / "palette.tif", values, photometric="palette", colormap=colormap)
        np.testing.assert_array_equal(read_image(folder / "palette.tif"), colormap[:, values].transpose(1, 2, 0))
        gray_map = np.repeat((np.arange(256, dtype=np.uint16) * 257)[None], 3, 0)[:, ::-1]
        tifffile.imwrite(folder / "graymap.tif", values, photometric="palette", colormap=gray_map)
        np.testing.assert_array_equal(read_image(folder / "graymap.tif"), 255 - values)  # gray: one channel


def test_a_cmyk_tiff_stack_reads_as_rgb_slices(tmp_path):
    stack = np.zeros((3, 8, 8, 4), np.uint8)
    stack[1, ..., 3] = 255
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="separated")
    rgb = read_image(tmp_path / "s.tif")
    assert rgb.shape == (3, 8, 8, 3)
    assert rgb[0].min() == 255 and rgb[1].max() == 0


@pytest.mark.parametrize(("photometric", "kw", "named"), [("ycbcr", {}, "YCBCR"), ("cielab", {}, "CIELAB")])
def test_tiff_colour_models_without_one_reading_are_refused_by_name(tmp_path, photometric, kw, named):
    tifffile.imwrite(tmp_path / "x.tif", RGB8, photometric=photometric, **kw)
    with pytest.raises(ImageReadError, match=f"TIFF colour model {named}.*not supported"):
        read_image(tmp_path / "x.tif")


def test_a_pillow_colour_model_without_one_reading_is_refused_by_name(tmp_path):
    frames = [Image.fromarray(RGB8), Image.fromarray(255 - RGB8)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="holds 2 frames"):
        read_image(tmp_path / "anim.png")
    assert "LAB" not in PIL_MODES


# --- equal channels are gray --------------------------------------------------------------------------------------

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.float32, np.float64]  # bool: uint8 before this


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from(DTYPES), channels=st.sampled_from([3, 4]), in_channels=st.sampled_from([1, 3]),
       kind=st.sampled_from(["percentile", "dtype_range"]), seed=st.integers(0, 1000))
def test_equal_channels_give_exactly_the_gray_model_input(dtype, channels, in_channels, kind, seed):
    rng = np.random.default_rng(seed)
    gray = (rng.random((20, 28)) * (1 if dtype in (np.float32, np.float64) else 200)).astype(dtype)
    rgb = np.repeat(gray[..., None], channels, -1)
    if channels == 4:
        rgb[..., 3] = rgb[..., 3][::-1]  # an alpha unlike the colour: ignored
    meta = ModelMetadata(config=ALNetConfig(in_channels=in_channels), normalization=Normalization(kind=kind))
    np.testing.assert_array_equal(model_input(rgb, meta), model_input(gray, meta))
    rgb[0, 0, 1] = rgb[0, 0, 0] + 1  # one pixel differs: colour again
    assert as_gray(rgb) is rgb


@pytest.mark.parametrize("in_channels", [1, 3])
def test_equal_channels_give_exactly_the_gray_images_segmentation(tmp_path, in_channels):
    """Through the whole engine and through files: an RGB PNG of a gray image gives the gray PNG's result."""
    from model_factory import calibrated_model, texture

    model = calibrated_model(in_channels)
    gray = (texture((48, 64), seed=3) * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.repeat(gray[..., None], 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    expected = model.predict(read_image(tmp_path / "gray.png"))
    for name in ("rgb.png", "palette.png"):
        np.testing.assert_array_equal(model.predict(read_image(tmp_path / name)), expected)
    np.testing.assert_array_equal(model.predict(np.repeat(gray[None, ..., None], 3, -1)), expected[None])


def test_unequal_channels_into_one_channel_are_still_the_luminance():
    luminance = RGB8.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(to_channels(RGB8, 1)[0], luminance, rtol=1e-6, atol=1e-4)
