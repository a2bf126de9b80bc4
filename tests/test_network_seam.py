"""The network seam: a second, tiny network family registered beside AL-Net runs through predict, tiling, the
blockwise volume engine, fine-tuning and weight files; unknown families and strides are refused clearly."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
import zarr
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from napari_alnet.engine.export import ExportError, export_model
from napari_alnet.engine.inference import to_model_input
from napari_alnet.engine.quantized import quantize
from napari_alnet.engine.segmenter import Segmenter, predict
from napari_alnet.engine.tiling import choose_tile, plan_tiles
from napari_alnet.engine.volume import segment_volume
from napari_alnet.io.pretrained import builtin_path, shipped_models
from napari_alnet.io.weights import WeightsError, load_weights, save_weights
from napari_alnet.model import (
    ALNet,
    ALNetConfig,
    ConvBNAct,
    UnknownFamily,
    build_network,
    family_named,
    family_of,
    is_network,
    known_families,
    register_family,
    unregister_family,
)
from napari_alnet.model.alnet import pad_to_stride
from napari_alnet.model.metadata import ModelMetadata
from napari_alnet.training.data import Pair
from napari_alnet.training.loop import TrainConfig, train
from napari_alnet.training.meaning import flipped_model


@dataclass(frozen=True)
class TinyConfig:
    in_channels: int = 1
    num_classes: int = 1
    width: int = 4

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TinyConfig:
        return cls(**json.loads(text))


class TinyNet(nn.Module):
    """3x3 conv+BN+ReLU, its 32x32 average pool as the deepest features, a 1x1 classifier of the pixel features
    beside their global mean (the pooled context): stride 32, a receptive field far below the tiles' margin."""

    stride = 32

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TinyConfig()
        self.stem = ConvBNAct(config.in_channels, config.width, 3)
        self.pool = nn.AvgPool2d(32)
        self.head = nn.Conv2d(2 * config.width, config.num_classes, 1)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        f = self.stem(pad_to_stride(x))
        g = self.pool(f).mean((2, 3), keepdim=True) if pooled is None else pooled
        return self.head(torch.cat([f, g.expand(-1, -1, *f.shape[-2:])], 1))[..., :h, :w]

    def deepest_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stem(pad_to_stride(x)))

    @property
    def is_reparameterized(self) -> bool:
        return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    def reparameterize(self) -> TinyNet:
        self.eval()
        self.stem.reparameterize()
        return self

    def input_stages(self) -> list[nn.Module]:
        return [self.stem]

    def output_layer(self) -> nn.Conv2d:
        return self.head


@pytest.fixture
def tiny():
    register_family("tiny", TinyNet, TinyConfig, title="Tiny")
    yield
    unregister_family("tiny")


def _image(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 255).astype(np.uint8)


def _trained_stats(net: TinyNet) -> TinyNet:
    """Non-trivial BatchNorm statistics, so that fusing them is exercised."""
    with torch.no_grad():
        net.stem.bn.running_mean.uniform_(-0.2, 0.2)
        net.stem.bn.running_var.uniform_(0.5, 1.5)
        net.head.weight.normal_()
    return net


def test_the_registry_knows_alnet_and_a_registered_family(tiny):
    assert known_families() == ("alnet", "tiny")
    net = build_network(TinyConfig(width=3))
    assert isinstance(net, TinyNet) and net.config.width == 3 and is_network(net)
    assert family_of(net).name == "tiny" and family_of(ALNetConfig()).name == "alnet"
    assert isinstance(build_network(), ALNet) and is_network(build_network(ALNetConfig()))
    with pytest.raises(ValueError, match="already registered"):
        register_family("tiny", TinyNet, TinyConfig)
    with pytest.raises(UnknownFamily, match=r"'nosuch'.*known: alnet, tiny"):
        family_named("nosuch")


def test_predict_a_whole_image_with_another_family(tiny):
    net = _trained_stats(TinyNet())
    image = _image((100, 120))
    seg = Segmenter.from_network(net, ModelMetadata(config=net.config), device="cpu", precision="fp32")
    assert seg.network is not net and seg.network.is_reparameterized and not net.is_reparameterized
    probs = seg.predict(image)
    x = torch.from_numpy(to_model_input(image, seg.metadata))[None]
    with torch.no_grad():
        expected = torch.sigmoid(net.eval()(x))[0, 0].numpy()
    assert probs.shape == (100, 120) and probs.std() > 1e-3
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(predict(net, image, device="cpu"), probs, atol=1e-6)  # a bare network is wrapped
    assert "Tiny" in seg.metadata.summary


def test_tiled_predict_equals_whole_image_predict(tiny):
    seg = Segmenter.from_network(_trained_stats(TinyNet()), device="cpu", precision="fp32")
    image = _image((700, 650), seed=1)
    assert choose_tile(image.shape, 576) == 576 and len(plan_tiles(image.shape, 576, 64)) > 1
    whole = seg.predict(image)
    tiled = seg.predict(image, tile=576, overlap=64)
    assert np.abs(tiled - whole).max() < 1e-5
    # the pooled context is the whole image's: a tile run on its own would see another mean and differ
    alone = seg.predict(image[:576, :576])
    assert np.abs(alone - whole[:576, :576]).max() > 1e-4


def test_the_blockwise_volume_engine_runs_another_family(tiny, tmp_path):
    seg = Segmenter.from_network(_trained_stats(TinyNet()), device="cpu", precision="fp32")
    data = _image((2, 320, 288), seed=2)
    ref = seg.predict(data)
    for name, block in (("planes.zarr", (1, 320, 288)), ("cut.zarr", (1, 160, 144))):
        summary = segment_volume(seg, data, tmp_path / name, block=block, probabilities=True, prob_dtype="float32")
        assert summary.complete
        prob = zarr.open_array(tmp_path / name.replace(".zarr", "_prob.zarr") / "0", mode="r")[:]
        labels = zarr.open_array(tmp_path / name / "0", mode="r")[:]
        assert np.abs(prob - ref).max() < 1e-4, name
        clear = np.abs(ref - seg.threshold) > 1e-4
        np.testing.assert_array_equal(labels[clear], (ref[clear] > seg.threshold).astype(np.uint8))


def test_weights_name_their_family_and_load_it_back(tiny, tmp_path):
    net = _trained_stats(TinyNet(TinyConfig(width=5)))
    meta = ModelMetadata(config=net.config, modality="tiny-test", threshold=0.4)
    for form, model in (("training", net), ("fused", TinyNet(TinyConfig(width=5)).reparameterize())):
        path = save_weights(model, meta, tmp_path / f"{form}.safetensors")
        with safe_open(str(path), "pt") as fh:
            header = fh.metadata()
        assert header["architecture"] == "tiny" and header["form"] == form
        loaded, loaded_meta = load_weights(path)
        assert isinstance(loaded, TinyNet) and loaded.config == TinyConfig(width=5)
        assert loaded.is_reparameterized == (form == "fused") and loaded_meta.threshold == 0.4
        for key, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], tensor), key
        assert loaded_meta.to_strings()["architecture"] == "tiny"
    segmenter = Segmenter.load(tmp_path / "training.safetensors", device="cpu", precision="fp32")
    assert isinstance(segmenter.network, TinyNet) and segmenter.metadata.modality == "tiny-test"


def test_an_unknown_family_is_refused_naming_the_file_and_the_known_families(tiny, tmp_path):
    net = TinyNet()
    strings = ModelMetadata(config=net.config).to_strings() | {"form": "training", "architecture": "nosuch"}
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=strings)
    with pytest.raises(WeightsError, match=r"foreign\.safetensors.*'nosuch'.*known families: alnet, tiny"):
        load_weights(path)
    good = save_weights(net, ModelMetadata(config=net.config), tmp_path / "tiny.safetensors")
    unregister_family("tiny")
    with pytest.raises(WeightsError, match=r"tiny\.safetensors.*'tiny'.*known families: alnet\)"):
        load_weights(good)


@pytest.mark.skipif("em" not in shipped_models(), reason="the shipped em model is not installed")
def test_files_without_a_family_are_alnet():
    path = builtin_path("em")
    with safe_open(str(path), "pt") as fh:
        assert "architecture" not in fh.metadata()  # a file from before families existed, kept as shipped
    net, meta = load_weights(path)
    assert isinstance(net, ALNet) and meta.family.name == "alnet" and "architecture" not in meta.to_strings()


def test_fine_tuning_another_family_from_its_weight_file(tiny, tmp_path):
    rng = np.random.default_rng(3)
    pairs = []
    for i in range(2):
        image = rng.normal(size=(1, 96, 96)).astype(np.float32)
        pairs.append(Pair(image, (image[0] > 0.3).astype(np.float32), name=f"p{i}"))
    start = save_weights(TinyNet(), ModelMetadata(config=TinyConfig()), tmp_path / "start.safetensors")
    before, _ = load_weights(start)
    cfg = TrainConfig(epochs=1, steps_per_epoch=4, crop=64, batch_size=2, lr=0.05, amp=False, freeze_stages=1)
    result = train(pairs, pairs[:1], ModelMetadata(config=TinyConfig()), tmp_path / "tuned.safetensors",
                   config=cfg, init=start)
    assert result.steps_done == 4 and result.best_epoch == 1 and "iou" in result.best_metrics
    tuned, meta = load_weights(result.out)
    assert isinstance(tuned, TinyNet) and meta.card["training"]["init"] == str(start)
    assert torch.equal(tuned.stem.conv.weight, before.stem.conv.weight)  # its first stage was frozen
    assert not torch.equal(tuned.head.weight, before.head.weight)  # the rest trained
    with pytest.raises(ValueError, match="1 stage"):
        train(pairs, [], ModelMetadata(config=TinyConfig()), tmp_path / "x.safetensors",
              config=TrainConfig(epochs=1, steps_per_epoch=1, crop=64, freeze_stages=2))


def test_flipping_another_family_inverts_its_probabilities(tiny, tmp_path):
    net = _trained_stats(TinyNet())
    path = save_weights(net, ModelMetadata(config=net.config), tmp_path / "tiny.safetensors")
    image = _image((64, 64), seed=4)
    flipped = flipped_model(path, TinyConfig())
    assert isinstance(flipped, TinyNet)
    p = predict(net, image, device="cpu")
    np.testing.assert_allclose(predict(flipped, image, device="cpu"), 1 - p, atol=1e-5)


class _Stride16(TinyNet):
    stride = 16


def test_a_stride_the_engine_cannot_tile_is_refused(tiny):
    with pytest.raises(ValueError, match=r"stride of 16.*32-pixel grid"):
        Segmenter.from_network(_Stride16(), device="cpu")
    with pytest.raises(TypeError, match="segmentation network"):
        Segmenter.from_network(nn.Conv2d(1, 1, 1), device="cpu")


def test_a_network_needs_its_family_registered_and_metadata_of_that_family(tiny):
    with pytest.raises(ValueError, match="family 'alnet', but the network given is of the family 'tiny'"):
        Segmenter.from_network(TinyNet(), ModelMetadata(), device="cpu")
    unregister_family("tiny")
    with pytest.raises(UnknownFamily, match="TinyConfig is the config of no registered network family"):
        Segmenter.from_network(TinyNet(), device="cpu")


def test_new_alnet_files_name_their_family(tmp_path):
    net = ALNet(ALNetConfig(stage_depths=(1, 1, 1, 1, 1)))
    path = save_weights(net, ModelMetadata(config=net.config), tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata()["architecture"] == "alnet"
    loaded, meta = load_weights(path)
    assert isinstance(loaded, ALNet) and meta.config == net.config
    assert "architecture" not in meta.to_strings()  # AL-Net's strings (and a volume run's identity) as before


def test_alnet_only_exports_refuse_another_family(tiny, tmp_path):
    seg = Segmenter.from_network(TinyNet(), device="cpu", precision="fp32")
    for fmt, out in (("onnx", "m.onnx"), ("torchscript", "m.pt"), ("bioimageio", "m.zip")):
        with pytest.raises(ExportError, match="family 'tiny'"):
            export_model(seg, tmp_path / out, fmt)
        assert not (tmp_path / out).exists()
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match=r"AL-Net graphs only.*'tiny'"):
        quantize(seg.network, seg.metadata, [_image((64, 64))], tmp_path / "m.int8.onnx")
