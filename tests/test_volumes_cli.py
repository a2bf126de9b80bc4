"""``alnet segment`` with Zarr inputs and OME-Zarr outputs (--block, --instances 3d, --overwrite)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.writer import write_image

from model_factory import save_test_model, texture
from napari_alnet.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_test_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def _data(shape=(3, 128, 112)) -> np.ndarray:
    return (texture(shape, seed=2, sigma=4) * 255).astype(np.uint8)


def test_a_zarr_input_goes_to_ome_zarr_and_a_complete_output_is_refused(tmp_path, weights, capsys):
    source = tmp_path / "em.zarr"
    write_image(_data(), zarr.open_group(source, mode="w"), axes="zyx", scale_factors=[],
                storage_options={"chunks": (1, 64, 56)})
    args = ["segment", str(source), "-o", str(tmp_path / "out"), "--model", str(weights), "--block", "2", "64", "112"]
    assert main(args) == 0
    labels = zarr.open_group(tmp_path / "out" / "em_labels.zarr", mode="r")
    assert labels.attrs["napari_alnet"]["complete"] and labels["0"].chunks == (1, 64, 56)
    assert "4 blocks of (2, 64, 112)" in capsys.readouterr().out
    assert main(args) == 2
    assert "is complete; refusing to write over it" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--threshold", "0.4"]) == 0


def test_a_tiff_to_dot_zarr_with_3d_instances_and_probabilities(tmp_path, weights, capsys):
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, _data(), imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "cells_labels.zarr"
    assert main(["segment", str(tif), "-o", str(out), "--model", str(weights), "--instances", "3d",
                 "--probabilities"]) == 0
    labels = zarr.open_array(out / "0", mode="r")
    prob = zarr.open_array(tmp_path / "cells_prob.zarr" / "0", mode="r")
    assert labels.dtype == np.uint32 and labels.shape == prob.shape == (3, 128, 112) and prob.dtype == np.uint8
    assert "objects" in capsys.readouterr().out


def test_volume_options_without_a_volume_are_refused(tmp_path, weights, capsys):
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, _data((2, 64, 64)))
    assert main(["segment", str(tif), "-o", str(tmp_path / "out"), "--model", str(weights), "--workers", "2"]) == 2
    assert "apply to OME-Zarr outputs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["segment", str(tif), "-o", str(tmp_path / "out"), "--model", str(weights), "--instances"]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "stack_labels.tif") as f:
        assert f.series[0].dtype == np.int32  # plain --instances keeps today's 2D int32 TIFF
