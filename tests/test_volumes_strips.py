"""Whole planes of a volume run through the network in row strips (engine.volume.strips): the same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from model_factory import calibrated_model, calibrated_network, texture
from napari_alnet.engine.volume import segment_volume
from napari_alnet.engine.volume import strips as strips_module
from napari_alnet.engine.volume.strips import StripedModel, StripedNetwork, encoder_halo, striped
from napari_alnet.model import ALNet, ALNetConfig
from napari_alnet.model.metadata import ModelMetadata


@pytest.mark.parametrize("stages", [0, 1, 2])
@pytest.mark.parametrize("pooled", [False, True], ids=["own-pool", "given-pool"])
def test_striped_forward_equals_the_whole_plane_forward_bit_for_bit(stages, pooled):
    net = calibrated_network()
    x = torch.from_numpy(np.stack([texture((300, 90), seed=s) for s in range(2)])[:, None])  # padded to 320 x 96
    x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.rand(2, net.config.stage_widths[-1], 1, 1) if pooled else None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = net(x, ctx)
        strip = StripedNetwork(net, rows=64, stages=stages)(x, ctx)  # 5 strips
    assert strip.shape == whole.shape == (2, 1, 300, 90)
    assert torch.equal(strip, whole)


def test_whole_plane_blocks_run_in_strips_and_equal_in_memory_predict(tmp_path, monkeypatch):
    model = calibrated_model().with_precision("bf16")
    calls = []
    original = StripedNetwork._low_strips

    def counted(self, skips, size):
        parts = list(original(self, skips, size))
        calls.append(len(parts))
        return iter(parts)

    monkeypatch.setattr(StripedNetwork, "_low_strips", counted)
    data = (texture((2, 576, 96), seed=4) * 255).astype(np.uint8)
    ref = model.predict(data)  # one whole-plane forward per batch, no strips
    assert not calls
    segment_volume(model, data, tmp_path / "v.zarr", block=(2, 576, 96), probabilities=True,
                   prob_dtype="float32")
    assert calls and calls[0] == -(-576 // strips_module.STRIP_ROWS)  # the block ran in strips
    probs = zarr.open_array(tmp_path / "v_prob.zarr" / "0", mode="r")[:]
    np.testing.assert_array_equal(probs, ref)
    labels = zarr.open_array(tmp_path / "v.zarr" / "0", mode="r")[:]
    np.testing.assert_array_equal(labels, (ref > model.threshold).astype(np.uint8))


def test_only_the_papers_network_in_torch_bf16_is_striped():
    fp32 = calibrated_model().with_precision("fp32")
    assert striped(fp32) is fp32  # its 2-thread kernels differ by ~1e-6 between a strip and the whole plane
    model = fp32.with_precision("bf16")
    assert isinstance(striped(model), StripedModel)
    assert striped(model).runner.net is model.runner and striped(model).precision == model.precision
    aspp = ALNet(ALNetConfig(context="aspp")).reparameterize().eval()
    other = type(model).from_network(aspp, ModelMetadata(config=aspp.config), device="cpu", precision="bf16")
    assert striped(other) is other


def test_the_encoder_halo_covers_the_striped_stages_reach():
    net = calibrated_network()  # stage depths 1, 2, 4: reach 1, then 2 + 4, then 4 + 3 x 8 input pixels
    assert encoder_halo(net, 0) == 0
    assert encoder_halo(net, 2) == 32  # 7 px, on the 32-px grid
    assert encoder_halo(net, 3) == 64  # 35 px
    with pytest.raises(ValueError, match="multiple of 32"):
        StripedNetwork(net, rows=100)


def test_a_run_keeps_big_buffers_for_reuse_and_gives_them_back(monkeypatch):
    from napari_alnet.engine.volume import memory

    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(memory, "_glibc", FakeLibc)
    with memory.reused_memory() as held:
        assert held
        assert sorted(calls) == sorted([(memory.M_MMAP_THRESHOLD, memory.HELD_BYTES),
                                        (memory.M_TRIM_THRESHOLD, memory.HELD_BYTES)])
    assert sorted(calls[2:], key=str) == sorted([*memory.RESTORED.items(), ("trim", 0)], key=str)
    monkeypatch.setattr(memory, "_glibc", lambda: None)  # not glibc: nothing to change
    with memory.reused_memory() as held:
        assert held is False
