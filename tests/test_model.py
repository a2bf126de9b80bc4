from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_alnet.model import ALNet, ALNetConfig, RepVGGBlock, count_parameters, family_of, is_network


def randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def fused_copy(model: ALNet) -> ALNet:
    clone = ALNet(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.reparameterize()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (67, 45), (160, 97)])
def test_reparameterized_matches_training_form(channels, size):
    model = ALNet(ALNetConfig(in_channels=channels))
    randomize_bn(model)
    model.eval()
    x = torch.randn(1, channels, *size)
    with torch.no_grad():
        ref = model(x)
        fused = fused_copy(model)(x)
    assert ref.shape == (1, 1, *size)
    assert (ref - fused).abs().max().item() <= 1e-4


def test_repvgg_block_fuses_exactly_with_and_without_identity():
    for cin, cout, stride in [(8, 8, 1), (8, 16, 2), (8, 16, 1)]:
        block = RepVGGBlock(cin, cout, stride)
        randomize_bn(block)
        block.eval()
        x = torch.randn(2, cin, 17, 23)
        with torch.no_grad():
            ref = block(x)
            block.reparameterize()
            out = block(x)
        assert (block.identity is None) and block.is_fused
        assert (ref - out).abs().max().item() <= 1e-5


def test_identity_branch_only_for_stride_one_equal_widths():
    assert RepVGGBlock(8, 8, 1).identity is not None
    assert RepVGGBlock(8, 8, 2).identity is None
    assert RepVGGBlock(8, 16, 1).identity is None


def test_fused_encoder_has_only_3x3_convs_and_no_bn():
    model = ALNet().reparameterize()
    assert model.is_reparameterized
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == sum(model.config.stage_depths)
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules())


def test_default_config_has_paper_parameter_count():
    model = ALNet()
    training = count_parameters(model)
    fused = count_parameters(model.reparameterize())
    assert abs(fused - 3.45e6) <= 0.03 * 3.45e6, fused
    assert training > fused


@pytest.mark.parametrize("size", [(1, 1), (33, 70), (605, 700)])
def test_any_input_size_gives_logits_of_same_size(size):
    model = ALNet().reparameterize()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *size))
    assert out.shape == (1, 1, *size)


@pytest.mark.parametrize("context,decoder", [("aspp", "asymmetric"), ("lraspp", "unet"), ("aspp", "unet"),
                                            ("none", "unet")])
def test_ablation_variants_run_and_fuse(context, decoder):
    model = ALNet(ALNetConfig(context=context, decoder=decoder, num_classes=2))
    randomize_bn(model)
    model.eval()
    x = torch.randn(1, 1, 70, 90)
    with torch.no_grad():
        ref = model(x)
        fused = fused_copy(model)(x)
    assert ref.shape == (1, 2, 70, 90)
    assert (ref - fused).abs().max().item() <= 1e-4


def test_full_resolution_decoder_grid_is_selectable():
    model = ALNet(ALNetConfig(decoder_stride=1)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 96)).shape == (1, 1, 64, 96)


def test_config_json_round_trip_and_validation():
    cfg = ALNetConfig(in_channels=3, context="aspp", decoder="unet", decoder_width=48)
    assert ALNetConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="context"):
        ALNetConfig(context="psp")
    with pytest.raises(ValueError, match="unknown"):
        ALNetConfig.from_json('{"bogus": 1}')


@pytest.mark.parametrize("context", ["lraspp", "aspp"])
def test_pooled_override_equals_global_pool(context):
    model = ALNet(ALNetConfig(context=context)).eval()
    x = torch.randn(1, 1, 96, 64)
    with torch.no_grad():
        pooled = model.deepest_features(x).mean(dim=(2, 3), keepdim=True)
        assert torch.allclose(model(x), model(x, pooled=pooled), atol=1e-6)
        assert not torch.allclose(model(x), model(x, pooled=pooled * 0 + 5.0), atol=1e-3)


def test_baseline_without_context_is_local():
    """The "baseline" has no global pooling: the image-wide pooled override cannot change its output."""
    model = ALNet(ALNetConfig(context="none", decoder="unet")).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, pooled=torch.full((1, 320, 1, 1), 5.0)))


def test_alnet_is_a_segmentation_network_of_the_alnet_family():
    net = ALNet(ALNetConfig(stage_depths=(1, 1, 1, 1, 1)))
    assert is_network(net) and net.stride == 32 and family_of(net).name == "alnet"
    stages = net.input_stages()
    assert len(stages) == 5 and stages[0] is net.encoder.stages[0]
    assert net.output_layer() is net.decoder.classify and net.output_layer().out_channels == 1
    x = torch.randn(1, 1, 64, 64)
    assert net.deepest_features(x).shape[-2:] == (64 // net.stride, 64 // net.stride)
    assert not is_network(nn.Conv2d(1, 1, 1))
