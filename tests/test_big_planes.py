"""Planes larger than the whole-plane limit: one encoder pass per tile, equal to whole-image inference and to the
two-pass path; probabilities streamed into a caller's array (float16, uint8, memmap) and, in a batch, into a
memory-mapped output or scratch file, with the same output files as the in-memory path, atomically."""

from __future__ import annotations

import tracemalloc
from itertools import pairwise

import numpy as np
import pytest
import tifffile
import torch

from model_factory import calibrated_model, texture
from napari_alnet import predict
from napari_alnet.engine import batch, tiling
from napari_alnet.engine.batch import segment_files_job
from napari_alnet.engine.inference import Context, probability_job
from napari_alnet.engine.progress import run_job
from napari_alnet.engine.single_pass import DECODER_HALO, encode, finish, splittable
from napari_alnet.io.stack_reader import PixelSize
from napari_alnet.io.stack_writer import MappedTiff, TiffStackWriter, recorded_info
from napari_alnet.model import ALNet, ALNetConfig


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


@pytest.fixture
def small_limit(monkeypatch):
    """A whole-plane limit of 512² and tiles of 768, so a 1000 x 1100 plane is a "big" one (2 x 3 tiles)."""
    monkeypatch.setattr(tiling, "WHOLE_IMAGE_PIXELS", 512 * 512)
    monkeypatch.setattr(tiling, "DEFAULT_TILE", 768)


def _big_image() -> np.ndarray:
    """A texture with a brightness ramp, so a tile normalized on its own bounds would differ from the plane."""
    img = texture((1000, 1100), seed=4)
    return (img * 0.5 + np.linspace(0, 0.5, 1100, dtype=np.float32)[None]).astype(np.float32)


@pytest.fixture
def encoder_calls(model):
    """Tiles through the encoder of ``model``'s network while a test runs."""
    calls: list[int] = []
    handle = model.network.encoder.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    yield calls
    handle.remove()


def test_a_big_plane_runs_each_tile_through_the_encoder_once_and_equals_whole_and_two_pass(model, small_limit,
                                                                                          encoder_calls, monkeypatch):
    img = _big_image()
    whole = predict(model, img, tile=1120)  # a tile as large as the plane: whole-image inference
    assert whole.std() > 0.05
    tiles = tiling.plan_tiles(img.shape, 768, 64)
    assert tiling.choose_tile(img.shape, None) == 768 and len(tiles) == 6
    calls = encoder_calls
    calls.clear()
    once = predict(model, img)
    assert sum(calls) == len(tiles)  # no second encoder pass for the context
    np.testing.assert_allclose(once, whole, atol=1e-4)
    monkeypatch.setattr(Context, "splits", property(lambda self: False))  # the pass-1-then-tiles path
    calls.clear()
    twice = predict(model, img)
    assert sum(calls) == 2 * len(tiles)
    np.testing.assert_allclose(twice, whole, atol=1e-4)
    np.testing.assert_allclose(once, twice, atol=1e-4)


def test_a_tiled_stack_and_progress_match_per_slice(model, small_limit):
    stack = np.stack([_big_image(), texture((1000, 1100), seed=5)])
    job = probability_job(model, stack)
    steps = []
    try:
        while True:
            steps.append(next(job))
    except StopIteration as stop:
        probs = stop.value
    assert [s.step for s in steps] == list(range(1, 25)) and steps[-1].total == 24  # 2 slices x 2 passes x 6
    assert "encoder" in steps[0].message and "slice 2/2" in steps[-1].message
    for z in range(2):
        np.testing.assert_allclose(probs[z], predict(model, stack[z], tile=1120), atol=1e-4)


@pytest.mark.parametrize("classes,grid", [(1, 2), (2, 2), (1, 1)])
def test_finish_of_encode_is_the_network(classes, grid):
    torch.manual_seed(classes + grid)
    net = ALNet(ALNetConfig(num_classes=classes, decoder_stride=grid)).reparameterize().eval()
    assert splittable(net)
    x = torch.from_numpy(texture((2, 1, 128, 192), 6))
    pooled = torch.randn(2, 320, 1, 1)
    with torch.inference_mode():
        full = net(x, pooled=pooled)
        for i, e in enumerate(encode(net, x)):
            assert e.low.shape == (1, classes, 128 // grid, 192 // grid) and e.features.shape == (1, 128, 4, 6)
            torch.testing.assert_close(finish(net, e.low, e.features, pooled[i:i + 1], (128, 192)), full[i:i + 1],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(e.deepest, net.deepest_features(x[i:i + 1]))
        # the decoder on a crop: equal to the whole image's beyond DECODER_HALO from the crop's inner edges
        crop = encode(net, x, [(0, 128, 64, 192), None])[0]
        assert crop.low.shape == (1, classes, 128 // grid, 128 // grid)
        cropped = finish(net, crop.low, crop.features[..., 2:], pooled[:1], (128, 128))
        torch.testing.assert_close(cropped[..., DECODER_HALO:], full[:1, ..., 64 + DECODER_HALO:],
                                   atol=1e-5, rtol=1e-5)
        assert (cropped[..., :8] - full[:1, ..., 64:72]).abs().max() > 1e-4  # the crop's own edge differs


def test_only_the_papers_network_in_eval_mode_is_split():
    assert not splittable(ALNet(ALNetConfig(context="aspp")).eval())
    assert not splittable(ALNet(ALNetConfig(decoder="unet")).eval())
    assert not splittable(ALNet())  # training mode
    assert not Context(ALNet().eval(), torch.device("cpu"), tta=True).splits


@pytest.mark.parametrize("dtype", [np.float16, np.uint8, np.float32])
def test_probabilities_are_written_into_the_callers_array(model, small_limit, dtype):
    img = _big_image()
    ref = predict(model, img)
    out = np.full(img.shape, 7, dtype)
    got = run_job(probability_job(model, img, out=out))
    assert got is out and out.dtype == dtype
    scale, tol = (255, 0.51) if dtype == np.uint8 else (1, 1e-3)
    assert np.abs(out.astype(np.float32) - ref * scale).max() <= tol


def test_a_memmap_output_of_a_stack_is_filled_in_place(model, small_limit, tmp_path):
    stack = np.stack([_big_image(), texture((1000, 1100), seed=7)])
    out = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float16, shape=stack.shape)
    assert run_job(probability_job(model, stack, out=out)) is out
    out.flush()
    back = np.load(tmp_path / "p.npy")
    assert np.abs(back.astype(np.float32) - predict(model, stack)).max() < 1e-3
    small = texture((64, 80), seed=8)  # the whole-image path writes into it too
    into = np.zeros(small.shape, np.uint8)
    assert run_job(probability_job(model, small, out=into)) is into and into.any()


def test_a_bad_output_array_is_refused(model):
    img = texture((64, 64))
    with pytest.raises(ValueError, match="shape"):
        run_job(probability_job(model, img, out=np.empty((64, 65), np.float32)))
    with pytest.raises(ValueError, match="float32, float64, float16 or uint8"):
        run_job(probability_job(model, img, out=np.empty((64, 64), np.int32)))
    frozen = np.empty((64, 64), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        run_job(probability_job(model, img, out=frozen))


def test_a_big_plane_never_holds_a_float32_copy_of_itself(model, monkeypatch):
    """NumPy's allocations while a tiled uint8 plane is predicted into a uint8 array stay well under one float32
    plane (the whole normalized input, an accumulator or a weight sum would each be one). Traced from the first
    tile on (the normalization bounds before it count a bounded sample's histogram); a margin of 64 px so that
    25 tiles of 512 stay fast (the figure here is memory, not accuracy)."""
    monkeypatch.setattr(tiling, "CONTEXT_MARGIN", 64)
    img = (texture((1600, 1600), seed=9) * 255).astype(np.uint8)
    out = np.empty(img.shape, np.uint8)
    assert len(tiling.plan_tiles(img.shape, 512, 64)) == 25
    job = probability_job(model, img, tile=512, out=out)
    tracemalloc.start()
    try:
        next(job)
        maps = tracemalloc.get_traced_memory()[0]  # the plane's maps, allocated at the first tile
        tracemalloc.reset_peak()
        with pytest.raises(StopIteration):
            while True:
                next(job)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    float32_plane = img.size * 4
    assert 0.3 * float32_plane < maps < peak < 0.75 * float32_plane, (maps, peak)


def test_predict_passes_out_through(model, small_limit):
    img = _big_image()
    out = np.empty(img.shape, np.float16)
    assert model.predict(img, out=out) is out
    assert predict(model, img, out=np.empty(img.shape, np.float32)).dtype == np.float32
    assert np.abs(out.astype(np.float32) - model.predict(img)).max() < 1e-3


@pytest.mark.parametrize("shape", [(300, 400), (3, 300, 400)])
def test_a_mapped_tiff_is_the_stack_writers_file_byte_for_byte(tmp_path, shape):
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    px, info = PixelSize(x=0.5, y=0.5, unit="um"), {"output": "probabilities"}
    with TiffStackWriter(tmp_path / "a.tif", shape, np.float32, px, compress=False, info=info) as writer:
        for plane in data.reshape(-1, *shape[-2:]):
            writer.write(plane)
        writer.finish()
    mapped = MappedTiff(tmp_path / "b.tif", shape, np.float32, px, info=info)
    for z, plane in enumerate(data.reshape(-1, *shape[-2:])):
        mapped.plane(z)[...] = plane
        mapped.release()  # the pages leave this process, the data stay in the file
        np.testing.assert_array_equal(mapped.band(z, 10, 30), plane[10:30])
    assert not (tmp_path / "b.tif").exists()  # nothing at the target before finish
    mapped.finish()
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def _segment_both_ways(model, tmp_path, monkeypatch, image, **kw):
    """``segment_files_job`` of ``image`` streamed (the big-plane path) and held in memory as before; the
    streamed run's count of ``MappedTiff.release`` calls."""
    src = tmp_path / "big.tif"
    axes = "ZYX" if image.ndim == 3 else "YX"
    tifffile.imwrite(src, image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um", "axes": axes})
    released = []
    release = MappedTiff.release
    monkeypatch.setattr(MappedTiff, "release", lambda self: (released.append(1), release(self))[1])
    streamed = run_job(segment_files_job([src], tmp_path / "streamed", model, **kw))
    monkeypatch.setattr(batch, "choose_tile", lambda *_a: None)  # every file through the in-memory path
    held = run_job(segment_files_job([src], tmp_path / "held", model, **kw))
    assert streamed.ok and held.ok and [p.name for p in streamed.written] == [p.name for p in held.written]
    return streamed, held, len(released)


def test_a_big_plane_streams_into_the_same_output_files(model, small_limit, tmp_path, monkeypatch):
    img = _big_image()
    streamed, held, released = _segment_both_ways(model, tmp_path, monkeypatch, img, probabilities=True,
                                                  instances=True)
    assert released >= 6  # after every batch of tiles
    for a, b in zip(streamed.written, held.written, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name  # pixels, pixel size and metadata alike
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == [
        "big_instances.tif", "big_labels.tif", "big_prob.tif"]
    np.testing.assert_array_equal(tifffile.imread(streamed.written[-1]), predict(model, img))
    assert recorded_info(streamed.written[-1])["output"] == "probabilities"


def test_a_stack_of_big_planes_streams_through_a_scratch_file(model, small_limit, tmp_path, monkeypatch):
    stack = np.stack([_big_image(), texture((1000, 1100), seed=5)])
    monkeypatch.setattr(batch, "BAND_ROWS", 96)  # several bands per slice
    streamed, held, released = _segment_both_ways(model, tmp_path, monkeypatch, stack)
    assert released >= 12
    assert streamed.written[0].read_bytes() == held.written[0].read_bytes()
    assert [p.name for p in (tmp_path / "streamed").iterdir()] == ["big_labels.tif"]  # the scratch file is gone


def test_a_failure_in_a_big_plane_leaves_no_output_and_keeps_the_old_one(model, small_limit, tmp_path, monkeypatch):
    src, out = tmp_path / "big.tif", tmp_path / "out"
    tifffile.imwrite(src, _big_image())
    out.mkdir()
    (out / "big_prob.tif").write_bytes(b"earlier")
    calls = []

    def fail_late(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("out of memory")
        return finish(self, *args)

    finish = Context.finish
    monkeypatch.setattr(Context, "finish", fail_late)
    summary = run_job(segment_files_job([src], out, model, probabilities=True, overwrite=True))
    assert len(calls) == 4 and "out of memory" in summary.failures[0][1]
    assert [p.name for p in out.iterdir()] == ["big_prob.tif"] and (out / "big_prob.tif").read_bytes() == b"earlier"


@pytest.mark.parametrize("length,tile,count,size", [(4096, 1536, 4, 1408), (12000, 1536, 12, 1472),
                                                   (8192, 2048, 5, 2048), (1120, 768, 3, 736)])
def test_tiles_are_balanced_as_few_as_the_asked_size_gives_and_no_larger(length, tile, count, size):
    assert tiling.balanced(length, tile, 64) == size
    tiles = tiling.plan_tiles((length, 64), tile, 64)
    assert len(tiles) == count and {t.size[0] for t in tiles} == {size}
    step = tile - 2 * tiling.CONTEXT_MARGIN - 64  # the unbalanced plan: tiles of ``tile``, the last one shifted in
    assert count == -(-(length - tile) // step) + 1
    cores = [t.core[:2] for t in tiles]
    assert cores[0][0] == 0 and cores[-1][1] == length and all(a[1] == b[0] for a, b in pairwise(cores))
