"""Axes as the file declares them (issue 25, item 2): every declared axis order (OME-Zarr multiscales axes, Zarr v3
dimension names, N5 ``axes``, TIFF / ImageJ axes) is read into the engine's (Z, Y, X) order and written back in the
declared order with its metadata, or refused naming the file, the axes found and what is supported."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ome_zarr.format import FormatV04, FormatV05

with warnings.catch_warnings():  # ome-zarr warns at import about a default argument of its own
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_multiscales_metadata

import test_volumes
from model_factory import calibrated_model, texture
from napari_alnet.engine.volume import segment_volume
from napari_alnet.io.volumes import VolumeError, open_volume

ZYX = ("z", "y", "x")
SCALE = {"z": 2.0, "y": 0.5, "x": 0.25}
VOLUME = (texture((4, 40, 48), seed=7) * 255).astype(np.uint8)  # (z, y, x)
PERMUTATIONS = list(itertools.permutations(range(3)))


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """The engine-order volume's labels and probabilities (semantic and 3D instances)."""
    out = {}
    for instances in (None, "3d"):
        summary = segment_volume(model, VOLUME, tmp_path_factory.mktemp("ref") / "o", probabilities=True,
                                 instances=instances)
        out[instances] = (zarr.open_group(summary.labels, mode="r")["0"][:],
                          zarr.open_group(summary.probabilities, mode="r")["0"][:])
    return out


def _ome(path, data: np.ndarray, names: list[str], zarr_format: int = 3) -> None:
    """An OME-Zarr image whose axes are ``names`` in the array's order, scaled per axis by ``SCALE``."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=zarr_format)
    group.create_array("0", data=data, chunks=data.shape)
    fmt = FormatV05() if zarr_format == 3 else FormatV04()
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [SCALE.get(n, 1.0) for n in names]}]}], fmt=fmt,
        axes=[{"name": n, "type": "space" if n in ZYX else "channel"} for n in names])


def _by_hand(group: zarr.Group, names: list[str], types: list[str]) -> None:
    """OME-NGFF 0.5 multiscales attributes written as another tool may write them (ome-zarr's writer insists on
    time first: the reader must not rely on it)."""
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": t} for n, t in zip(names, types, strict=True)],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [SCALE.get(n, 1.0) for n in names]}]}]}]}


def _check_output(summary, order: tuple[int, ...], expected: tuple[np.ndarray, np.ndarray], names: list[str]):
    for path, want in zip((summary.labels, summary.probabilities), expected, strict=True):
        group = zarr.open_group(path, mode="r")
        np.testing.assert_array_equal(group["0"][:], np.transpose(want, order))
        attrs = group.attrs.get("ome", group.attrs)
        ms = attrs["multiscales"][0]
        assert [a["name"] for a in ms["axes"]] == names
        assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [SCALE[n] for n in names]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.sampled_from(PERMUTATIONS), zarr_format=st.sampled_from([2, 3]))
def test_segmenting_a_permuted_ome_zarr_is_the_permuted_segmentation(tmp_path_factory, model, reference, order,
                                                                     zarr_format):
    names = [ZYX[i] for i in order]
    folder = tmp_path_factory.mktemp("perm")
    _ome(folder / "in.zarr", np.ascontiguousarray(np.transpose(VOLUME, order)), names, zarr_format)
    volume = open_volume(folder / "in.zarr")
    assert volume.shape == VOLUME.shape and volume.geometry.scale == (2.0, 0.5, 0.25)
    np.testing.assert_array_equal(volume.data.compute(), VOLUME)
    summary = segment_volume(model, folder / "in.zarr", folder / "out", probabilities=True)
    _check_output(summary, order, reference[None], names)


def test_instances_of_a_permuted_volume_are_the_permuted_instances(tmp_path, model, reference):
    order = (1, 2, 0)  # the reported case: y, x, z
    names = [ZYX[i] for i in order]
    _ome(tmp_path / "in.zarr", np.ascontiguousarray(np.transpose(VOLUME, order)), names)
    summary = segment_volume(model, tmp_path / "in.zarr", tmp_path / "out", probabilities=True, instances="3d")
    _check_output(summary, order, reference["3d"], names)
    again = open_volume(summary.labels)  # the output reads back in the engine's order
    assert again.shape == VOLUME.shape and again.geometry.stored == tuple(names)


def test_an_ome_zarr_with_channel_and_time_axes_in_any_place_reads_by_name(tmp_path):
    data = np.transpose(VOLUME, (2, 0, 1))[:, None, :, None, :]  # x, t=1, z, c=1, y
    names = ["x", "t", "z", "c", "y"]
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "in.zarr"), mode="w", zarr_format=3)
    group.create_array("0", data=np.ascontiguousarray(data), chunks=data.shape)
    _by_hand(group, names, [{"t": "time", "c": "channel"}.get(n, "space") for n in names])
    volume = open_volume(tmp_path / "in.zarr")
    np.testing.assert_array_equal(volume.data.compute(), VOLUME)
    assert volume.geometry.stored == ("x", "z", "y")


@pytest.mark.parametrize("names", [["a", "b", "c"], ["z", "z", "x"], ["y", "x", "q"]])
def test_spatial_axes_without_z_y_x_names_are_refused_by_name(tmp_path, names):
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "in.zarr"), mode="w", zarr_format=3)
    group.create_array("0", data=VOLUME, chunks=VOLUME.shape)
    _by_hand(group, names, ["space"] * 3)
    with pytest.raises(VolumeError, match=r"in\.zarr: its OME-NGFF axes name the spatial axes .*z, y and x"):
        open_volume(tmp_path / "in.zarr")


# --- plain Zarr arrays and N5 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", PERMUTATIONS)
def test_zarr_dimension_names_are_honoured(tmp_path, order):
    names = [ZYX[i] for i in order]
    zarr.create_array(zarr.storage.LocalStore(tmp_path / "a.zarr"), data=np.ascontiguousarray(
        np.transpose(VOLUME, order)), chunks=(8, 8, 8), dimension_names=names)
    volume = open_volume(tmp_path / "a.zarr")
    np.testing.assert_array_equal(volume.data.compute(), VOLUME)
    assert volume.geometry.stored == (tuple(names) if list(order) != [0, 1, 2] else ())


def test_zarr_dimension_names_that_cannot_be_read_are_refused_and_others_ignored(tmp_path):
    zarr.create_array(zarr.storage.LocalStore(tmp_path / "t.zarr"), data=VOLUME, chunks=VOLUME.shape,
                      dimension_names=["t", "y", "x"])
    with pytest.raises(VolumeError, match=r"t\.zarr: its Zarr dimension names are \['t', 'y', 'x'\].*'t' axis has 4"):
        open_volume(tmp_path / "t.zarr")
    zarr.create_array(zarr.storage.LocalStore(tmp_path / "d.zarr"), data=VOLUME, chunks=VOLUME.shape,
                      dimension_names=["dim_0", "dim_1", "dim_2"])  # say nothing of z, y, x: the shape rule
    assert open_volume(tmp_path / "d.zarr").shape == VOLUME.shape


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 0, 1)])
def test_n5_axes_attributes_are_honoured(tmp_path, model, order):
    names = [ZYX[i] for i in order]  # C order; N5 lists them x-first, reversed
    path = test_volumes.write_n5(tmp_path / "em.n5", np.ascontiguousarray(np.transpose(VOLUME, order)),
                                 block=(8, 16, 16))
    meta = json.loads((path / "attributes.json").read_text())
    meta.pop("resolution"), meta.pop("units")
    (path / "attributes.json").write_text(json.dumps(meta | {"axes": names[::-1]}))
    volume = open_volume(path)
    np.testing.assert_array_equal(volume.data.compute(), VOLUME)
    assert volume.geometry.stored == (tuple(names) if order != (0, 1, 2) else ())


# --- TIFF ---------------------------------------------------------------------------------------------------------

def test_tiff_and_imagej_axes_read_by_letter(tmp_path):
    tifffile.imwrite(tmp_path / "h.tif", VOLUME[None, :, None], imagej=True, metadata={"axes": "TZCYX"})
    volume = open_volume(tmp_path / "h.tif")
    np.testing.assert_array_equal(volume.data.compute(), VOLUME)
    assert volume.geometry.axes == ZYX and not volume.geometry.stored
    tifffile.imwrite(tmp_path / "two.tif", np.stack([VOLUME, VOLUME])[:, :, None], imagej=True,
                     metadata={"axes": "TZCYX"})
    with pytest.raises(VolumeError, match=r"two\.tif: TIFF axes 'TZYX'.*more than one axis to stack"):
        open_volume(tmp_path / "two.tif")


def test_a_2d_image_stored_x_first_is_segmented_and_written_x_first(tmp_path, model):
    plane = VOLUME[1]
    _ome(tmp_path / "in.zarr", np.ascontiguousarray(plane.T), ["x", "y"])
    summary = segment_volume(model, tmp_path / "in.zarr", tmp_path / "out", probabilities=True)
    reference = segment_volume(model, plane, tmp_path / "ref", probabilities=True)
    for mine, theirs in ((summary.labels, reference.labels), (summary.probabilities, reference.probabilities)):
        np.testing.assert_array_equal(zarr.open_group(mine, mode="r")["0"][:],
                                      zarr.open_group(theirs, mode="r")["0"][:].T)
