"""``alnet segment`` with Zarr inputs and OME-Zarr outputs (--block, --instances 3d, --overwrite)."""

from __future__ import annotations

import errno
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.writer import write_image

from model_factory import save_test_model, texture
from napari_alnet.cli import main
from napari_alnet.engine.volume import tasks
from napari_alnet.io.atomic import write_error, writer_lock


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
    with tifffile.TiffFile(tmp_path / "out" / "stack_instances.tif") as f:
        assert f.series[0].dtype == np.int32  # plain --instances keeps the 2D int32 TIFF (beside the mask)


def _tree(path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


def test_an_output_inside_the_input_is_refused_and_nothing_is_written(tmp_path, weights, capsys):
    """Anywhere inside the input's container: beside the array in its store, inside an OME-Zarr image, or the
    input itself; exit 2, the store untouched."""
    store = tmp_path / "in.zarr"
    zarr.open_group(store, mode="w").create_array("raw", data=_data((2, 64, 64)), chunks=(1, 64, 64))
    ome = tmp_path / "em.ome.zarr"
    write_image(_data((2, 64, 64)), zarr.open_group(ome, mode="w"), axes="zyx", scale_factors=[])
    cases = [(store / "raw", store / "seg.zarr"), (store / "raw", store / "raw" / "labels.zarr"),
             (store / "raw", store), (ome, ome / "labels")]
    for source, out in cases:
        before = _tree(tmp_path)
        assert main(["segment", str(source), "-o", str(out), "--model", str(weights)]) == 2, out
        err = capsys.readouterr().err
        assert "lies inside (or holds) the input" in err and "Traceback" not in err, err
        assert _tree(tmp_path) == before
    assert main(["segment", str(store / "raw"), "-o", str(tmp_path / "seg.zarr"), "--model", str(weights)]) == 0


def test_a_full_disk_during_a_zarr_write_is_said_as_on_the_tiff_path_and_the_run_resumes(tmp_path, weights, capsys,
                                                                                          monkeypatch):
    source = tmp_path / "em.zarr"
    write_image(_data(), zarr.open_group(source, mode="w"), axes="zyx", scale_factors=[],
                storage_options={"chunks": (1, 128, 112)})
    put, calls = tasks._put, []

    def full_after_one_block(array, region, data):
        calls.append(region)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        put(array, region, data)

    monkeypatch.setattr(tasks, "_put", full_after_one_block)
    args = ["segment", str(source), "-o", str(tmp_path / "seg.zarr"), "--model", str(weights), "--block", "1", "128",
            "112"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"seg\.zarr: the disk is full \(\d+ MB free on .+\); the blocks finished so far are kept", err)
    assert "Traceback" not in err and "No space left" not in err
    tiff = str(write_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "x.tif"))
    assert re.search(r"x\.tif: the disk is full \(\d+ MB free on .+\);", tiff)  # the same words, one function
    monkeypatch.setattr(tasks, "_put", put)
    assert main(args) == 0
    assert "(2 now, 1 done before)" in capsys.readouterr().out


def test_a_second_run_into_an_output_being_written_says_it_kept_the_others(tmp_path, weights, capsys):
    """Two `alnet segment` runs into one OME-Zarr: the one that does not write says it kept the other's output
    (io.atomic.claim_writer); a lock whose process is gone (SIGKILL) is taken over."""
    source = tmp_path / "em.zarr"
    write_image(_data((2, 64, 64)), zarr.open_group(source, mode="w"), axes="zyx", scale_factors=[])
    out = tmp_path / "seg.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from napari_alnet.io.atomic import claim_writer; "
                               f"claim_writer({str(out)!r}); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["segment", str(source), "-o", str(out), "--model", str(weights)]) == 2
        err = capsys.readouterr().err
        assert f"another run (PID {holder.pid} on" in err and "kept that run's output and wrote nothing" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["segment", str(source), "-o", str(out), "--model", str(weights)]) == 0  # a dead run's lock
    assert not writer_lock(out).exists()
