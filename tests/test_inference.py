"""The inference engine: tiling equivalence, shapes, dtypes, channels, stacks, progress/stop, devices, TTA."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

from model_factory import calibrated_model, texture
from napari_alnet import predict
from napari_alnet.engine.dihedral import dihedral, undo_dihedral
from napari_alnet.engine.inference import to_model_input
from napari_alnet.engine.progress import run_job
from napari_alnet.engine.segmenter import Segmenter
from napari_alnet.engine.tiling import CONTEXT_MARGIN, ceil_to, choose_tile, min_tile, plan_tiles
from napari_alnet.model import ALNet
from napari_alnet.model.metadata import Normalization, percentiles


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


def _as_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(img * 255).astype(np.uint8)


def test_tiled_matches_whole_image_and_needs_the_image_context(model):
    img = texture((600, 640), seed=1)
    whole = predict(model, img)
    assert whole.std() > 0.1 and 0.05 < np.median(whole) < 0.95  # not saturated: the comparison means something
    tiled = predict(model, img, tile=576)
    assert len(plan_tiles(img.shape, 576, 64)) == 4
    assert np.abs(tiled - whole)[16:-16, 16:-16].max() < 1e-3
    # Without the whole image's pooled context a tile differs by far more (so the check above can fail).
    x = torch.from_numpy(to_model_input(img, model.metadata))[None]
    with torch.inference_mode():
        alone = torch.sigmoid(model.network(x[..., :576, :576]))[0, 0].numpy()
    assert np.abs(alone - whole[:576, :576])[: -CONTEXT_MARGIN, : -CONTEXT_MARGIN].max() > 3e-3


def test_tiled_row_of_tiles_with_tta_matches_whole_image(model):
    img = texture((32, 700), seed=2)
    assert len(plan_tiles(img.shape, 640, 64)) == 2
    assert np.abs(predict(model, img, tile=640) - predict(model, img)).max() < 1e-3
    tta_tiled, tta_whole = predict(model, img, tile=640, tta=True), predict(model, img, tta=True)
    assert tta_tiled.shape == img.shape and np.abs(tta_tiled - tta_whole).max() < 1e-3


def test_tile_plan_cores_partition_and_keep_the_margin():
    for shape, tile, overlap in [((1500, 1300), 640, 64), ((700, 2000), 544, 0), ((2100, 900), 1024, 96)]:
        tiles = plan_tiles(shape, tile, overlap)
        padded = tuple(-(-n // 32) * 32 for n in shape)
        cover = np.zeros(padded, int)
        # a core (the pixels taken from its tile) keeps the margin and half the overlap from every inner edge
        keep = CONTEXT_MARGIN + ceil_to(overlap) // 2 // 32 * 32
        for t in tiles:
            assert t.y % 32 == 0 and t.x % 32 == 0 and t.y + t.size[0] <= padded[0] and t.x + t.size[1] <= padded[1]
            y0, y1, x0, x1 = t.core
            cover[y0:y1, x0:x1] += 1
            top, bottom, left, right = t.edges
            assert (not top or y0 - t.y >= keep) and (not left or x0 - t.x >= keep)
            assert (not bottom or t.y + t.size[0] - y1 >= keep) and (not right or t.x + t.size[1] - x1 >= keep)
            assert all(c % 32 == 0 for c in t.core)
        assert (cover == 1).all()
    assert min_tile(64) == 544
    with pytest.raises(ValueError, match="at least 544"):
        plan_tiles((2000, 2000), 512, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        choose_tile((3000, 3000), 600)
    assert choose_tile((2048, 2048), None) is None and choose_tile((2049, 2048), None) == 1536
    assert choose_tile((500, 500), 576) is None


@pytest.mark.parametrize("shape", [(1, 1), (33, 700), (605, 700)])
def test_odd_shapes(model, shape):
    img = (texture(shape, 3) * 4000).astype(np.uint16) if min(shape) > 1 else np.full(shape, 7, np.uint16)
    prob = predict(model, img)
    assert prob.shape == shape and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


def test_every_dtype_same_content_same_result(model):
    img8 = _as_uint8(texture((64, 64), 4))
    ref = predict(model, img8)
    assert ref.std() > 0.05
    assert np.array_equal(predict(model, img8.astype(np.uint16)), ref)
    for image in (img8.astype(np.uint16) * 257, img8.astype(np.int32) - 1000, img8.astype(np.float32) / 255,
                  img8.astype(np.float64), img8.astype(np.int64) * 3):
        np.testing.assert_allclose(predict(model, image), ref, atol=1e-5, err_msg=str(image.dtype))
    assert np.abs(predict(model, 255 - img8) - ref).max() > 1e-2  # the content matters
    assert predict(model, img8 > 128).shape == (64, 64)  # bool is accepted


def test_nan_inf_and_bad_shapes_refused(model):
    img = texture((40, 40), 5)
    img[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict(model, img)
    stack = np.stack([texture((40, 40), 5)] * 3)
    stack[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"slice 1"):
        predict(model, stack)
    with pytest.raises(ValueError, match=r"expected an image shaped \(Y, X\)"):
        predict(model, np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(ValueError, match="empty"):
        predict(model, np.zeros((0, 5)))
    with pytest.raises(ValueError, match="not a real numeric"):
        predict(model, np.zeros((8, 8), complex))
    with pytest.raises(ValueError, match="rgb=True needs"):
        predict(model, np.zeros((2, 8, 8)), rgb=True)


def test_rgb_image_on_grayscale_model_converted_or_refused(model):
    rgb = _as_uint8(texture((48, 56, 3), 6))
    gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    norm = model.metadata.normalization
    # as in training: bounds from the RGB values, then luminance
    np.testing.assert_allclose(to_model_input(rgb, model.metadata)[0], norm.apply(gray, norm.bounds(rgb)), atol=1e-5)
    prob = predict(model, rgb)
    assert prob.shape == (48, 56) and prob.std() > 0.01
    rgba = np.concatenate([rgb, np.full((48, 56, 1), 9, np.uint8)], axis=-1)
    np.testing.assert_allclose(predict(model, rgba), prob, atol=1e-6)
    assert predict(model, rgb, rgb=False).shape == (48, 56, 3)  # forced: a stack of 48 slices 56 x 3
    strict = calibrated_model(rgb_to_gray="refuse", modality="em")
    with pytest.raises(ValueError, match=r"expects grayscale \(1-channel\) images .* got an RGB image"):
        predict(strict, rgb)
    assert predict(strict, gray).shape == (48, 56)


def test_grayscale_image_on_rgb_model_replicated():
    rgb_model = calibrated_model(3)
    gray = _as_uint8(texture((40, 48), 7))
    x = to_model_input(gray, rgb_model.metadata)
    assert x.shape == (3, 40, 48) and np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])
    np.testing.assert_allclose(x[0], to_model_input(gray, calibrated_model(1).metadata)[0])
    prob = predict(rgb_model, gray)
    assert prob.shape == (40, 48) and prob.std() > 0.01
    assert np.abs(predict(rgb_model, _as_uint8(texture((40, 48, 3), 8))) - prob).max() > 1e-2
    assert predict(rgb_model, np.stack([gray, gray[::-1]])).shape == (2, 40, 48)


def test_stack_equals_slices_for_any_batch_size(model):
    stack = (texture((5, 48, 64), 9) * 1000).astype(np.uint16)
    per_slice = np.stack([predict(model, s) for s in stack])
    for batch_size in (1, 2, 4):  # batched convolutions may round differently: 1e-4
        np.testing.assert_allclose(predict(model, stack, batch_size=batch_size), per_slice, atol=1e-4)
    rgb_stack = _as_uint8(texture((2, 32, 32, 3), 10))
    assert predict(model, rgb_stack).shape == (2, 32, 32)


def test_progress_per_batch_and_prompt_stop(model):
    stack = texture((6, 64, 64), 11)
    reports = []
    run_job(model.predict_job(stack, batch_size=2), reports.append)
    assert [(r.step, r.total) for r in reports] == [(1, 3), (2, 3), (3, 3)]
    seen = []
    start = time.perf_counter()
    result = run_job(model.predict_job(np.repeat(stack, 20, axis=0), batch_size=1), lambda r: seen.append(r) or True)
    assert result is None and len(seen) == 1 and time.perf_counter() - start < 5
    # stop in the middle of a tiled slice
    assert run_job(model.predict_job(texture((32, 700), 2), tile=640), lambda r: r.step >= 2) is None


def test_no_torch_mode_leaks_while_a_job_is_suspended(model):
    job = model.predict_job(texture((2, 32, 32), 12), batch_size=1)
    next(job)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    job.close()


def test_training_form_model_left_alone_and_device_reported():
    net = ALNet()
    img = texture((40, 40), 13)
    prob = predict(net, img, device="cpu")
    assert not net.is_reparameterized and net.training
    np.testing.assert_allclose(prob, predict(copy.deepcopy(net).reparameterize(), img), atol=1e-5)
    fused = calibrated_model()
    result = run_job(fused.predict_job(img))
    assert result.device == "cpu" and result.precision == "fp32" and result.probabilities.shape == (40, 40)
    with pytest.raises(ValueError, match="not available"):
        predict(fused, img, device="cuda:7" if not torch.cuda.is_available() else "mps:9")


def test_a_segmenter_elsewhere_never_moves_the_original_or_the_callers_network(monkeypatch):
    """``to(device)`` and ``predict(..., device=...)`` work on copies (``Module.to`` is in place)."""
    from napari_alnet.engine import devices

    monkeypatch.setattr(devices, "available_devices", lambda: ["meta", "cpu"])  # a second device without a GPU
    net = ALNet().reparameterize().eval()
    segmenter = Segmenter.from_network(net, device="cpu")
    assert segmenter.network is not net
    elsewhere = segmenter.to("meta")
    assert elsewhere is not segmenter and elsewhere.device.type == "meta"
    assert all(p.device.type == "meta" for p in elsewhere.network.parameters())
    assert segmenter.device.type == "cpu" and all(p.device.type == "cpu" for p in segmenter.network.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the caller's module is not frozen or moved either
    assert segmenter.to("cpu") is segmenter and segmenter.to(None) is segmenter
    img = texture((40, 40), 15)
    before = predict(segmenter, img)
    predict(ALNet(), img, device="cpu")
    np.testing.assert_array_equal(predict(segmenter, img), before)
    with pytest.raises(TypeError, match="expected a Segmenter"):
        predict(torch.nn.Conv2d(1, 1, 1), img)


def test_tta_is_equivariant_and_plain_inference_is_not(model):
    x = torch.arange(24.0).reshape(1, 1, 4, 6)
    for k in range(8):
        assert torch.equal(undo_dihedral(dihedral(x, k), k), x)
    img = texture((64, 64), 14)
    tta = predict(model, img, tta=True)
    np.testing.assert_allclose(predict(model, img.T.copy(), tta=True), tta.T, atol=1e-5)
    assert np.abs(predict(model, img.T.copy()) - predict(model, img).T).max() > 1e-3


def test_models_with_a_fixed_input_size_run_there_and_return_full_size(tmp_path):
    from napari_alnet import load_model, predict
    from napari_alnet.io.weights import ModelMetadata, save_weights
    from napari_alnet.model import ALNet, ALNetConfig

    meta = ModelMetadata(config=ALNetConfig(in_channels=3), input_size=(64, 64))
    model = load_model(save_weights(ALNet(meta.config), meta, tmp_path / "m.safetensors"))
    seen = []
    model.network.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    image = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    prob = predict(model, image)
    assert prob.shape == (100, 150) and prob.dtype == np.float32
    assert seen == [(64, 64)]


def test_zoomed_models_run_on_the_zoomed_image_and_return_full_size(tmp_path):
    """A model with ``input_scale`` 2 gives exactly what its network gives on the 2x image, resized back."""
    from napari_alnet import load_model, predict
    from napari_alnet.engine.progress import Progress
    from napari_alnet.engine.resolution import resample_image, resample_probabilities
    from napari_alnet.io.weights import ModelMetadata, save_weights
    from napari_alnet.model import ALNet

    net = ALNet()
    plain = load_model(save_weights(net, ModelMetadata(), tmp_path / "plain.safetensors"))
    zoomed = load_model(save_weights(net, ModelMetadata(input_scale=2.0), tmp_path / "zoomed.safetensors"))
    stack = np.random.default_rng(1).integers(0, 4000, (3, 40, 50), dtype=np.uint16)
    seen = []
    zoomed.network.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    reports = []
    job = zoomed.predict_job(stack, batch_size=2)
    try:
        while True:
            reports.append(next(job))
    except StopIteration as done:
        prob = done.value.probabilities
    assert prob.shape == (3, 40, 50) and prob.dtype == np.float32
    assert all(h >= 80 and w >= 100 for h, w in seen)
    assert all(isinstance(r, Progress) for r in reports) and reports[-1].fraction == 1.0
    assert [r.step for r in reports] == sorted(r.step for r in reports)
    expected = resample_probabilities(np.stack([predict(plain, resample_image(s, (80, 100))) for s in stack]),
                                      (40, 50))
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    assert np.abs(prob - predict(plain, stack)).max() > 1e-3  # the zoom is not a no-op


def test_the_a_decoders_inference_order_is_the_papers_function():
    """Eval mode reduces Fhigh to the class logits on the stride-32 grid before upsampling (docs/performance.md):
    the same function as the paper's order, which training keeps for BatchNorm's batch statistics."""
    for fused in (False, True):
        net = ALNet().eval()
        if fused:
            net.reparameterize()
        x = torch.from_numpy(texture((2, 1, 96, 160), 5))
        with torch.inference_mode():
            fast = net(x)
            net.decoder.training = True  # the paper's order; every BatchNorm stays in eval mode
            paper = net(x)
        assert torch.allclose(fast, paper, atol=1e-5), (fused, (fast - paper).abs().max())


def test_a_segmenter_in_bf16_runs_under_bf16_autocast_and_reports_it():
    model = calibrated_model().with_precision("bf16")
    seen = []
    model.network.encoder.register_forward_hook(
        lambda _m, _args, out: seen.append((torch.is_autocast_enabled("cpu"), out[-1].dtype)))
    result = run_job(model.predict_job(texture((40, 40), 2)))
    assert result.precision == "bf16" and seen == [(True, torch.bfloat16)]
    assert result.probabilities.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
def test_integer_percentiles_by_histogram_equal_numpys_exactly(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    for trial in range(200):
        low = int(rng.integers(info.min, info.max))
        values = rng.integers(low, int(rng.integers(low, info.max)) + 1, size=int(rng.integers(1, 2000)))
        values = values.astype(dtype).reshape(-1, 1) if trial % 2 else values.astype(dtype)
        qs = (float(rng.uniform(0, 100)), 0.0, 1.0, 50.0, 99.0, 100.0)
        assert percentiles(values, qs) == [float(v) for v in np.percentile(values, qs)], (trial, values[:5])
    image = (texture((300, 200), 2) * info.max).astype(dtype)
    lo, hi = np.percentile(image, [1.0, 99.0])
    assert Normalization().bounds(image) == (float(lo), float(hi))
