"""``alnet segment`` / ``segment_files_job``: streaming, failures, overwrite rules, interruption; ``alnet demo``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile
from skimage import io

import napari_alnet.engine.batch as batch
import napari_alnet.io.stack_writer as stack_writer
from model_factory import save_test_model, texture
from napari_alnet import load_model, predict
from napari_alnet.cli import main
from napari_alnet.engine.batch import segment_files_job
from napari_alnet.engine.postprocess import instance_labels
from napari_alnet.engine.progress import run_job


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_test_model(tmp_path_factory.mktemp("model") / "test.safetensors", threshold=0.45,
                           objects="background", modality="em")


def _stack(depth: int = 6, seed: int = 0) -> np.ndarray:
    return (texture((depth, 48, 56), seed, 2.0) * 3000).astype(np.uint16)


def _write_stack(path, data):
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um"})
    return path


def _segment(*args) -> int:
    return main(["segment", *map(str, args), "--device", "cpu"])


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_stack_streamed_to_disk_equals_in_memory_prediction(tmp_path, weights, capsys):
    data = _stack()
    src = _write_stack(tmp_path / "em.tif", data)
    out = tmp_path / "out"
    assert _segment(src, "-o", out, "--model", weights, "--probabilities") == 0
    model = load_model(weights, device="cpu")
    expected = predict(model, data)
    with tifffile.TiffFile(out / "em_prob.tif") as tif:
        prob = tif.asarray()
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == pytest.approx(0.05)
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.pages[0].tags["XResolution"].value[0] / tif.pages[0].tags["XResolution"].value[1] == \
            pytest.approx(250)
    assert prob.dtype == np.float32 and prob.shape == data.shape
    np.testing.assert_allclose(prob, expected, atol=1e-6)
    labels = tifffile.imread(out / "em_labels.tif")
    assert labels.dtype == np.uint8 and np.array_equal(labels, (expected > 0.45).astype(np.uint8))
    assert 0.05 < labels.mean() < 0.95  # the threshold from the metadata matters here
    assert "6 slices" in capsys.readouterr().out
    assert _leftovers(out) == []


def test_instances_for_png_and_rgb_inputs(tmp_path, weights):
    gray = (texture((40, 50), 3) * 255).astype(np.uint8)
    io.imsave(tmp_path / "cells.png", gray, check_contrast=False)
    rgb = (texture((2, 40, 50, 3), 4) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "colour.tif", rgb, photometric="rgb")
    out = tmp_path / "out"
    assert _segment(tmp_path / "cells.png", tmp_path / "colour.tif", "-o", out, "--model", weights,
                    "--instances") == 0
    prob = predict(load_model(weights, device="cpu"), gray)
    ids = tifffile.imread(out / "cells_instances.tif")  # the ids beside the mask, not under its name
    expected = instance_labels(prob, 0.45, "background")
    assert ids.dtype == np.int32 and np.array_equal(ids, expected) and ids.max() >= 1
    mask = tifffile.imread(out / "cells_labels.tif")
    assert mask.dtype == np.uint8 and np.array_equal(mask, (prob > 0.45).astype(np.uint8))
    assert tifffile.imread(out / "colour_labels.tif").dtype == np.uint8
    colour = tifffile.imread(out / "colour_instances.tif")
    assert colour.shape == (2, 40, 50)
    ids0, ids1 = set(np.unique(colour[0])) - {0}, set(np.unique(colour[1])) - {0}
    assert not ids0 & ids1  # unique across slices


def test_corrupt_tiff_among_good_files(tmp_path, weights, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _write_stack(folder / "a.tif", _stack(2, 1))
    (folder / "b.tif").write_bytes(b"II*\x00" + b"\x00garbage" * 20)
    truncated = tmp_path / "full.tif"
    _write_stack(truncated, _stack(3, 2))
    (folder / "c.tif").write_bytes(truncated.read_bytes()[:6000])
    io.imsave(folder / "d.png", (texture((30, 30), 5) * 255).astype(np.uint8), check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    holes = texture((3, 20, 20), 6)
    holes[2, 5, 5] = np.nan
    tifffile.imwrite(folder / "e.tif", holes, photometric="minisblack")
    out = tmp_path / "out"
    rc = _segment(folder, tmp_path / "missing.tif", "-o", out, "--model", weights)
    err = capsys.readouterr().err
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "d_labels.tif"]
    for name in ("b.tif", "c.tif", "e.tif", "missing.tif"):
        lines = [line for line in err.splitlines() if name in line and "error" in line]
        assert lines, f"no error line for {name} in:\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("alnet segment: error: ")]
    assert len(errors) == 4  # each failure once
    assert "4 input(s) failed" in err and "truncated" in next(line for line in errors if "c.tif" in line)
    assert "slice 2: the image contains NaN" in next(line for line in errors if "e.tif" in line)


def test_existing_output_kept_unless_overwrite(tmp_path, weights, capsys):
    src = _write_stack(tmp_path / "s.tif", _stack(2, 3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "s_labels.tif").write_bytes(b"keep me")
    assert _segment(src, "-o", out, "--model", weights) == 0
    assert (out / "s_labels.tif").read_bytes() == b"keep me"
    out_text = capsys.readouterr().out
    assert "skipped 1 existing outputs (--overwrite replaces them): s_labels.tif" in out_text
    assert "slices/s" not in out_text and out_text.startswith("nothing to segment: every output exists")
    assert _segment(src, "-o", out, "--model", weights, "--overwrite") == 0
    assert tifffile.imread(out / "s_labels.tif").shape == (2, 48, 56)


def test_never_writes_over_an_input(tmp_path, weights, capsys):
    _write_stack(tmp_path / "x.tif", _stack(1, 4))
    precious = tmp_path / "x_labels.tif"
    precious.write_bytes(b"an input, not an output")
    rc = _segment(tmp_path, "-o", tmp_path, "--model", weights, "--overwrite")
    assert rc == 1 and "refusing to overwrite an input" in capsys.readouterr().err
    assert precious.read_bytes() == b"an input, not an output"


def test_interruption_leaves_no_partial_file(tmp_path, weights, monkeypatch, capsys):
    src = _write_stack(tmp_path / "big.tif", _stack(9, 5))
    other = _write_stack(tmp_path / "ok.tif", _stack(2, 6))
    out = tmp_path / "out"
    calls = []
    real = batch.semantic_labels

    def failing(prob, threshold):
        calls.append(1)
        if len(calls) == 6:  # after the first batch of slices went to the writer
            raise KeyboardInterrupt
        return real(prob, threshold)

    monkeypatch.setattr(batch, "semantic_labels", failing)
    assert _segment(src, "-o", out, "--model", weights, "--probabilities") == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == []
    # an error in the middle of one stack: that input fails cleanly, the others are written
    calls.clear()
    monkeypatch.setattr(batch, "semantic_labels", lambda p, t: (_ for _ in ()).throw(RuntimeError("boom"))
                        if len(calls.append(1) or calls) == 5 else real(p, t))
    assert _segment(src, other, "-o", out, "--model", weights, "--probabilities") == 1
    assert "RuntimeError: boom" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["ok_labels.tif", "ok_prob.tif"]


def test_stop_mid_stack_returns_promptly_without_partial_file(tmp_path, weights):
    src = _write_stack(tmp_path / "deep.tif", _stack(40, 7))
    out = tmp_path / "out"
    model = load_model(weights, device="cpu")
    start = time.perf_counter()
    summary = run_job(segment_files_job([src], out, model, probabilities=True), lambda r: r.step >= 4)
    assert summary.stopped and summary.slices <= 8 and not summary.written
    assert time.perf_counter() - start < 20
    assert list(out.iterdir()) == []


def test_unusable_tile_size_refused_up_front(tmp_path, weights, capsys):
    src = _write_stack(tmp_path / "s.tif", _stack(1, 9))
    with pytest.raises(SystemExit):
        _segment(src, "-o", tmp_path / "out", "--model", weights, "--tile", "512")
    assert "at least 544" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiple of 32"):
        next(segment_files_job([src], tmp_path / "out", load_model(weights, device="cpu"), tile=1000))
    assert not (tmp_path / "out").exists()


def test_bigtiff_for_large_outputs_keeps_pixel_size(tmp_path, weights, monkeypatch):
    monkeypatch.setattr(stack_writer, "BIGTIFF_BYTES", 1000)
    src = _write_stack(tmp_path / "s.tif", _stack(2, 8))
    assert _segment(src, "-o", tmp_path / "out", "--model", weights) == 0
    with tifffile.TiffFile(tmp_path / "out" / "s_labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].compression == 8  # zlib
        assert tif.asarray().shape == (2, 48, 56)
        assert tif.shaped_metadata[0]["spacing"] == pytest.approx(0.05)


def test_demo_writes_labels_and_overlay(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "-o", "demo", "--slices", "2", "--size", "96", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for name in ("em_like_stack.tif", "em_like_stack_labels.tif", "em_like_stack_overlay.png"):
        assert str((tmp_path / "demo" / name).resolve()) in printed  # where the outputs are, whatever the cwd
    labels = tifffile.imread(tmp_path / "demo" / "em_like_stack_labels.tif")
    overlay = io.imread(tmp_path / "demo" / "em_like_stack_overlay.png")
    assert labels.shape == (2, 96, 96) and overlay.shape == (96, 96, 3)
    assert "segmented a generated EM-like stack" in printed and " s (" in printed


def test_precision_is_chosen_reported_and_recorded(tmp_path, weights, capsys):
    from napari_alnet.io.stack_writer import recorded_info

    src = _write_stack(tmp_path / "em.tif", _stack(2))
    assert _segment(src, "-o", tmp_path / "bf16", "--model", weights, "--precision", "bf16") == 0
    assert "on cpu (bf16)" in capsys.readouterr().out
    assert recorded_info(tmp_path / "bf16" / "em_labels.tif")["precision"] == "bf16"
    assert _segment(src, "-o", tmp_path / "auto", "--model", weights) == 0  # no bf16 validation in its card: fp32
    assert "on cpu (fp32)" in capsys.readouterr().out
    info = recorded_info(tmp_path / "auto" / "em_labels.tif")
    assert info["precision"] == "fp32" and info["precision_requested"] == "auto"
    assert _segment(src, "-o", tmp_path / "fp16", "--model", weights, "--precision", "fp16") == 2
    assert "fp16 runs on CUDA only" in capsys.readouterr().err
