"""The input contract, one class of fault per table: files, axes, values from files, non-finite numbers."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tifffile
import torch

from napari_alnet.engine.postprocess import check_probabilities, instance_labels, semantic_labels
from napari_alnet.io.images import ImageReadError
from napari_alnet.io.stack_reader import open_slices, read_image
from napari_alnet.io.weights import WeightsError, load_weights, read_weights, save_weights
from napari_alnet.model import ALNet
from napari_alnet.model.metadata import ModelMetadata, Normalization


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.png", b"", "is empty"),
    ("text.png", b"hello, world", "is not a PNG file"),
    ("text.jpg", b"GIF89a......", "is not a JPG file"),
    ("text.tif", b"not a tiff at all", "is not a TIF file"),
])
def test_unreadable_files_say_what_they_are(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    for reader in (read_image, open_slices):
        with pytest.raises(ImageReadError, match=expected) as info:
            reader(path)
        assert str(path) in str(info.value) and "plugin" not in str(info.value)


def _imwrite(path, data, **kw):
    tifffile.imwrite(path, data, **kw)
    return path


def test_an_imagej_stack_read_as_channels_gets_a_hint_and_an_axes_override(tmp_path):
    stack = np.arange(6 * 32 * 40, dtype=np.uint16).reshape(6, 32, 40)
    path = _imwrite(tmp_path / "ij.tif", stack, imagej=True)  # tifffile marks the first axis as channels
    with pytest.raises(ImageReadError, match=r"6 channels .* pass axes='ZYX'"):
        open_slices(path)
    with open_slices(path, axes="ZYX") as reader:
        assert reader.shape == (6, 32, 40) and np.array_equal(reader[4], stack[4])
    for bad in ("ZY", "ZZX", "Z1X"):
        with pytest.raises(ImageReadError, match="do not fit the series"):
            open_slices(path, axes=bad)


def test_two_stack_axes_are_refused_naming_both_and_a_time_axis_carries_no_z_spacing(tmp_path):
    meta = {"spacing": 0.5, "unit": "um"}
    tz = _imwrite(tmp_path / "tz.tif", np.zeros((2, 3, 32, 40), np.uint8), imagej=True, resolution=(10, 10),
                  metadata={"axes": "TZYX", **meta})
    with pytest.raises(ImageReadError, match=r"2 axes to stack along \(T=2, Z=3"):
        open_slices(tz)
    z = _imwrite(tmp_path / "z.tif", np.zeros((3, 32, 40), np.uint8), imagej=True, resolution=(10, 10),
                 metadata={"axes": "ZYX", **meta})
    t = _imwrite(tmp_path / "t.tif", np.zeros((3, 32, 40), np.uint8), imagej=True, resolution=(10, 10),
                 metadata={"axes": "TYX", **meta})
    assert open_slices(z).pixel_size.z == 0.5
    with open_slices(t) as reader:
        assert len(reader) == 3 and reader.pixel_size.z is None and reader.pixel_size.x == pytest.approx(0.1)


def test_every_series_of_a_multi_series_tiff_is_named_or_chosen(tmp_path):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(np.zeros((32, 40), np.uint8))
        writer.write(np.full((4, 16, 20), 7, np.uint8), photometric="minisblack")
    with pytest.raises(ImageReadError, match=r"2 image series \(#0: axes YX shape \(32, 40\); #1: .*\(4, 16, 20\)"):
        open_slices(path)
    with open_slices(path, series=1) as reader:
        assert reader.shape == (4, 16, 20) and int(reader[3].max()) == 7
    with pytest.raises(ImageReadError, match="series 2 does not exist"):
        open_slices(path, series=2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.uint64])
def test_normalization_cannot_overflow(dtype):
    rng = np.random.default_rng(0)
    info = np.finfo(dtype) if np.issubdtype(dtype, np.floating) else np.iinfo(dtype)
    image = (rng.random((64, 64)) * float(info.max) / 2).astype(dtype)
    image[0, 0], image[1, 1] = info.max, info.min
    for norm in (Normalization(), Normalization(kind="dtype_range")):
        out = norm.apply(image)
        assert out.dtype == np.float32 and np.isfinite(out).all()
    out = Normalization().apply(image)  # percentiles: the bulk of the image still spans the model's input range
    low, high = np.percentile(out, [5, 95])
    assert -2.5 < low < -1 and 1.5 < high < 2.5


def test_normalization_of_ordinary_images_is_unchanged():
    image = np.random.default_rng(1).integers(0, 255, (40, 48)).astype(np.uint8)
    norm = Normalization()
    lo, hi = norm.bounds(image)
    expected = ((image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo) - 0.5) / 0.25
    np.testing.assert_allclose(norm.apply(image), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("field", "value"), [
    ("threshold", 1.5), ("threshold", -1.0), ("threshold", math.nan), ("threshold", 0.0), ("input_scale", math.nan),
    ("objects", "cells"), ("rgb_to_gray", "maybe"), ("input_size", (0, 64)),
])
def test_metadata_values_are_checked_when_made_or_read(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        ModelMetadata(**{field: value})
    path = save_weights(ALNet(), ModelMetadata(), tmp_path / "ok.safetensors")
    tensors, meta, form = read_weights(path)
    strings = meta.to_strings() | {"form": form}
    strings[field] = repr(value) if not isinstance(value, (str, tuple)) else (
        value if isinstance(value, str) else str(list(value)))
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=strings)
    with pytest.raises(WeightsError, match=f"{bad}: has unreadable metadata"):
        read_weights(bad)


@pytest.mark.parametrize(("low", "high", "std"), [(99.0, 1.0, 0.25), (1.0, 101.0, 0.25), (1.0, 99.0, 0.0),
                                                  (math.nan, 99.0, 0.25), (1.0, 99.0, math.inf)])
def test_normalization_values_are_checked(low, high, std):
    with pytest.raises(ValueError, match="normalization"):
        Normalization(low=low, high=high, std=std)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_weights_with_non_finite_values_are_refused(tmp_path, bad):
    model = ALNet()
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = bad
    path = save_weights(model, ModelMetadata(), tmp_path / "diverged.safetensors")
    with pytest.raises(WeightsError, match=r"diverged.safetensors: 1 tensor\(s\) hold NaN or infinite values"):
        load_weights(path)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_probabilities_never_become_labels(bad):
    prob = np.full((16, 16), 0.2, np.float32)
    prob[3, 4] = bad
    for make in (lambda p: semantic_labels(p, 0.5), lambda p: instance_labels(p, 0.5), check_probabilities):
        with pytest.raises(ValueError, match="1 NaN/infinite probabilities"):
            make(prob)


@pytest.mark.parametrize(("shape", "spatial"), [
    ((40, 48), (40, 48)), ((40, 48, 1), (40, 48)), ((40, 48, 2), (40, 48)), ((40, 48, 3), (40, 48)),
    ((40, 48, 4), (40, 48)), ((3, 40, 48), (3, 40, 48)), ((3, 40, 48, 1), (3, 40, 48)), ((3, 40, 48, 2), (3, 40, 48)),
    ((3, 40, 48, 3), (3, 40, 48)),
])
def test_every_channel_count_has_one_meaning(shape, spatial):
    """1 = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA; a gray channel gives exactly the gray image's result."""
    from model_factory import calibrated_model

    model = calibrated_model()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    prob = model.predict(image)
    assert prob.shape == spatial
    if shape[-1] in (1, 2) and len(shape) > 2:
        np.testing.assert_array_equal(prob, model.predict(np.ascontiguousarray(image[..., 0])))


@pytest.mark.parametrize("shape", [(2, 3, 40, 48), (2, 3, 40, 48, 1), (40,), (1, 2, 3, 40, 48, 3)])
def test_shapes_without_one_reading_are_refused_naming_the_shape(shape):
    from model_factory import calibrated_model

    with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
        calibrated_model().predict(np.zeros(shape, np.uint8))


def test_any_accepted_image_gives_finite_probabilities_of_its_spatial_shape():
    """Property: over shapes, dtypes and value ranges the engine accepts, the output has the image's spatial shape
    and is finite in [0, 1]."""
    import hypothesis
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    from model_factory import calibrated_model

    model = calibrated_model()
    dtypes = st.sampled_from([np.uint8, np.uint16, np.int16, np.int64, np.float32, np.float64, np.bool_])
    shapes = st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40),
                       st.sampled_from([0, 1, 2, 3, 4])).map(
        lambda t: ((t[0],) if t[0] > 1 else ()) + (t[1], t[2]) + ((t[3],) if t[3] else ()))

    @hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
    @hypothesis.given(hnp.arrays(dtypes, shapes, elements=None))
    def check(image):
        if np.issubdtype(image.dtype, np.floating):
            image = np.nan_to_num(image, nan=0.0, posinf=np.finfo(image.dtype).max, neginf=np.finfo(image.dtype).min)
        prob = model.predict(image)
        spatial = image.shape[:-1] if image.ndim >= 3 and image.shape[-1] <= 4 else image.shape
        assert prob.shape == spatial and prob.dtype == np.float32
        assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1

    check()


# --- every axis and series of a file reaches the CLI; earlier outputs are not inputs ----------------------------

@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    from model_factory import save_test_model

    return save_test_model(tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.mark.parametrize(("flags", "slices"), [(["--axes", "ZYX"], 5), (["--axes", "zyx"], 5)])
def test_segment_reads_an_imagej_channel_stack_as_z_when_told(tmp_path, weight_file, flags, slices):
    from napari_alnet import cli

    path = _imwrite(tmp_path / "ij.tif", np.zeros((slices, 32, 40), np.uint8), imagej=True)
    assert cli.main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(weight_file)]) == 1
    assert cli.main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(weight_file), *flags]) == 0
    assert tifffile.imread(tmp_path / "out" / "ij_labels.tif").shape == (slices, 32, 40)


def test_segment_picks_the_series_it_is_told(tmp_path, weight_file, capsys):
    from napari_alnet import cli

    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((32, 40), np.uint8))
        tif.write(np.zeros((4, 16, 20), np.uint8), photometric="minisblack")
    args = ["segment", str(path), "--model", str(weight_file), "-o"]
    assert cli.main([*args, str(tmp_path / "a")]) == 1 and "--series K" in capsys.readouterr().err
    assert cli.main([*args, str(tmp_path / "b"), "--series", "1"]) == 0
    assert tifffile.imread(tmp_path / "b" / "two_labels.tif").shape == (4, 16, 20)
    assert cli.main([*args, str(tmp_path / "c"), "--series", "2"]) == 1
    assert "series 2 does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["ZZX", "ZY", "Z1X", ""])
def test_axes_flags_without_one_y_and_one_x_are_usage_errors(tmp_path, weight_file, bad):
    from napari_alnet import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(weight_file), "--axes", bad])
    assert stop.value.code == 2


def test_rerunning_into_the_input_folder_does_not_segment_earlier_outputs(tmp_path, weight_file):
    from napari_alnet import cli

    folder = tmp_path / "data"
    folder.mkdir()
    _imwrite(folder / "cell.tif", np.zeros((32, 40), np.uint8))
    _imwrite(folder / "other_labels.tif", np.zeros((32, 40), np.uint8))  # no "other" image: an input
    args = ["segment", str(folder), "-o", str(folder), "--model", str(weight_file), "--probabilities"]
    for _ in range(3):
        assert cli.main(args) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "cell.tif", "cell_labels.tif", "cell_prob.tif", "other_labels.tif", "other_labels_labels.tif",
        "other_labels_prob.tif"]
    assert cli.main([*args, "--overwrite"]) == 0  # outputs replaced, still not read as inputs
    assert len(list(folder.iterdir())) == 6
    _imwrite(folder / "cell_labels.tif", np.ones((32, 40), np.uint8))  # the user's own file of that name: an input
    assert cli.main([*args, "--overwrite"]) == 1
    assert (tifffile.imread(folder / "cell_labels.tif") == 1).all()


# --- lossy masks --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("suffix", "values", "expected"), [
    (".png", [0, 1, 7, 255], [False, True, True, True]),          # lossless: any non-zero value (labels, 0/1, 0/255)
    (".tif", [0, 3, 200], [False, True, True]),
    (".jpg", [0, 3, 60, 127, 128, 250, 255], [False, False, False, False, True, True, True]),  # ringing is not fg
    (".jpeg", [0, 200], [False, True]),
])
def test_mask_foreground_per_format(suffix, values, expected):
    from napari_alnet.io.images import mask_foreground

    mask = np.array([values], np.uint8)
    assert mask_foreground(mask, f"m{suffix}").tolist() == [expected]


def test_a_jpeg_mask_that_cannot_be_read_is_refused_not_guessed():
    from napari_alnet.io.images import mask_foreground

    with pytest.raises(ValueError, match=r"m\.jpg: a JPEG \(lossy\) mask with values up to 1 only"):
        mask_foreground(np.array([[0, 1, 1]], np.uint8), "m.jpg")


def test_jpeg_training_masks_give_the_png_masks_foreground(tmp_path):
    import imageio.v3 as iio

    from napari_alnet.training.data import load_pairs

    yy, xx = np.mgrid[:96, :96]
    truth = ((yy - 48) ** 2 + (xx - 40) ** 2 < 30 ** 2) | ((yy // 8 + xx // 8) % 7 == 0)
    image = (truth * 180 + 30).astype(np.uint8)
    iio.imwrite(tmp_path / "im.png", image)
    iio.imwrite(tmp_path / "m.png", truth.astype(np.uint8) * 255)
    iio.imwrite(tmp_path / "m.jpg", truth.astype(np.uint8) * 255, quality=50)
    ringing = iio.imread(tmp_path / "m.jpg")
    assert ((ringing > 0) != truth).mean() > 0.02  # the old rule's error on this mask
    (png,), (jpg,) = (load_pairs([(tmp_path / "im.png", tmp_path / m)], Normalization(), in_channels=1)
                      for m in ("m.png", "m.jpg"))
    assert (png.mask == truth).all()
    assert (jpg.mask != png.mask).mean() < 0.005


def test_every_reader_of_image_files_follows_the_tiff_contract(tmp_path):
    """Training, evaluation and export read files with ``read_image``: the same refusals as ``alnet segment``."""
    from napari_alnet.training.data import load_pairs

    two = tmp_path / "two.tif"
    with tifffile.TiffWriter(two) as tif:
        tif.write(np.zeros((32, 40), np.uint8))
        tif.write(np.zeros((4, 16, 20), np.uint8), photometric="minisblack")
    with pytest.raises(ImageReadError, match="2 image series"):
        read_image(two)
    assert read_image(two, series=1).shape == (4, 16, 20)
    channels = _imwrite(tmp_path / "ij.tif", np.zeros((6, 32, 40), np.uint8), imagej=True)
    with pytest.raises(ImageReadError, match="axes='ZYX'"):
        read_image(channels)
    assert read_image(channels, axes="ZYX").shape == (6, 32, 40)
    mask = _imwrite(tmp_path / "m.tif", np.zeros((32, 40), np.uint8))
    with pytest.raises(ImageReadError, match="2 image series"):
        load_pairs([(two, mask)], Normalization(), in_channels=1)
