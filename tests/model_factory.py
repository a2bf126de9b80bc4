"""Small test models whose outputs are not saturated (no shipped weights needed)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_alnet.engine.normalization import model_input
from napari_alnet.engine.segmenter import Segmenter
from napari_alnet.io.weights import save_weights
from napari_alnet.model import ALNet, ALNetConfig
from napari_alnet.model.metadata import ModelMetadata


def texture(shape: tuple[int, ...], seed: int = 0, sigma: float = 3.0) -> np.ndarray:
    """Smooth random float32 texture in [0, 1] (cheap stand-in for an image; a last axis of 3 is colour)."""
    rng = np.random.default_rng(seed)
    sigmas = [sigma] * len(shape)
    if len(shape) >= 3 and shape[-1] == 3:
        sigmas[-1] = 0
    img = ndi.gaussian_filter(rng.normal(size=shape), sigmas)
    return ((img - img.min()) / (np.ptp(img) + 1e-9)).astype(np.float32)


@lru_cache(maxsize=4)
def _calibrated_state(in_channels: int) -> dict[str, torch.Tensor]:
    """Fused weights of a default-initialised AL-Net whose BatchNorm statistics were measured on textures (so
    activations keep unit scale) and whose classifier is rescaled to logits of mean 0, std 1 on them."""
    torch.manual_seed(0)
    config = ALNetConfig(in_channels=in_channels)
    model = ALNet(config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    meta = ModelMetadata(config=config)
    shape = (192, 192, 3)[: 2 + (in_channels > 1)]
    x = torch.from_numpy(np.stack([model_input(texture(shape, s), meta) for s in range(3)]))
    model.train()
    with torch.no_grad():
        model(x)
        model.reparameterize()
        logits = model(x)
        scale = 1.0 / float(logits.std())
        head = model.decoder.classify
        head.weight.mul_(scale)
        head.bias.sub_(float(logits.mean())).mul_(scale)
    return {k: v.clone() for k, v in model.state_dict().items()}


def calibrated_network(in_channels: int = 1) -> ALNet:
    """A fused, eval-mode AL-Net with non-saturated outputs."""
    model = ALNet(ALNetConfig(in_channels=in_channels)).reparameterize()
    model.load_state_dict(_calibrated_state(in_channels))
    return model.eval()


def calibrated_model(in_channels: int = 1, **meta) -> Segmenter:
    """A ``Segmenter`` of ``calibrated_network`` on the CPU with ``ModelMetadata(**meta)``."""
    net = calibrated_network(in_channels)
    return Segmenter.from_network(net, ModelMetadata(config=net.config, **meta), device="cpu")


def save_test_model(path: Path, in_channels: int = 1, **meta) -> Path:
    """A weight file of ``calibrated_network`` (for ``load_model`` / ``alnet --model FILE``)."""
    net = calibrated_network(in_channels)
    return save_weights(net, ModelMetadata(config=net.config, **meta), path)
