"""``Segmenter``: a model ready to segment — the fused network, its metadata, where it came from, its device.

What ``load_model`` returns. Declared attributes instead of attributes patched onto an ``nn.Module``; the network
is private to the segmenter (built from a copy, never the caller's module) and is never modified afterwards, so
``segmenter.to("cuda")`` gives a second segmenter and leaves the first where it was.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.weights import load_weights, resolve_weights
from ..model import ALNet
from ..model.metadata import ModelMetadata
from .devices import resolve_device
from .inference import probability_job
from .progress import Job, run_job

#: Numeric precisions a segmenter can run in (``fp16`` autocast is used on CUDA).
PRECISIONS = ("fp32",)


@dataclass(frozen=True)
class Prediction:
    """What one prediction produced: float32 foreground ``probabilities`` with the image's spatial shape, the
    ``device`` and ``precision`` it ran with, and its wall time."""

    probabilities: np.ndarray
    device: str
    precision: str
    seconds: float


@dataclass(frozen=True, eq=False)
class Segmenter:
    """A fused, eval-mode AL-Net on one device with the metadata of its weight file.

    Build one with ``Segmenter.load(name_or_path)`` or ``Segmenter.from_network(net, metadata)``; the dataclass
    constructor expects ``network`` already fused, in eval mode and on ``device`` (it is taken as is).
    """

    network: ALNet
    metadata: ModelMetadata
    #: Built-in name or weight file it was loaded from (``"network"`` for an in-memory one).
    source: str
    device: torch.device
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not self.network.is_reparameterized:
            raise ValueError("Segmenter needs a re-parameterized network; use Segmenter.from_network(net)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def load(cls, name_or_path: str | Path, device: str | torch.device | None = None) -> Segmenter:
        """The model stored under a built-in name or in a weight file, on ``device`` (``None``: the best here)."""
        network, metadata = load_weights(resolve_weights(name_or_path))
        return cls.from_network(network, metadata, source=str(name_or_path), device=device)

    @classmethod
    def from_network(cls, network: ALNet, metadata: ModelMetadata | None = None, *, source: str = "network",
                     device: str | torch.device | None = None) -> Segmenter:
        """A segmenter of a copy of ``network`` (training or fused form; the caller's module is left untouched).

        ``metadata``: defaults for the network's config when ``None``; ``device``: ``None`` keeps the network's.
        """
        dev = _device_of(network) if device is None else resolve_device(device)
        net = copy.deepcopy(network)
        if not net.is_reparameterized:
            net.reparameterize()
        meta = metadata if metadata is not None else ModelMetadata(config=network.config)
        return cls(_placed(net, dev), meta, source, dev)

    def to(self, device: str | torch.device | None) -> Segmenter:
        """The same model on ``device`` (``None``: this one): ``self`` when it is already there, else a new
        segmenter holding a copy of the network; ``self`` is never changed."""
        dev = self.device if device is None else resolve_device(device)
        if dev == self.device:
            return self
        return Segmenter(_placed(copy.deepcopy(self.network), dev), self.metadata, self.source, dev, self.precision)

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    def predict_job(self, image: np.ndarray, *, tile: int | None = None, overlap: int = 64, batch_size: int = 4,
                    tta: bool = False, rgb: bool | None = None) -> Job[Prediction | None]:
        """``inference.probability_job`` as a ``Job`` returning a ``Prediction`` (``None`` when stopped).

        The image is checked at once (a ``ValueError`` here, not at the first step).
        """
        job = probability_job(self, image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta, rgb=rgb)
        return self._timed(job)

    def _timed(self, job: Job[np.ndarray | None]) -> Job[Prediction | None]:
        start = time.perf_counter()
        probs = yield from job
        if probs is None:
            return None
        return Prediction(probs, str(self.device), self.precision, time.perf_counter() - start)

    def predict(self, image: np.ndarray, *, tile: int | None = None, overlap: int = 64, batch_size: int = 4,
                tta: bool = False, rgb: bool | None = None) -> np.ndarray:
        """float32 foreground probabilities with the image's spatial shape (see ``inference.probability_job``)."""
        job = self.predict_job(image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta, rgb=rgb)
        return run_job(job).probabilities

    def __repr__(self) -> str:
        return (f"Segmenter(source={self.source!r}, modality={self.metadata.modality!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r})")


def _device_of(network: ALNet) -> torch.device:
    return next(network.parameters()).device


def _placed(network: ALNet, device: torch.device) -> ALNet:
    """``network`` (a private copy) in eval mode on ``device``, channels-last on CPU."""
    network = network.to(device).eval()
    if device.type == "cpu":
        network = network.to(memory_format=torch.channels_last)
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def as_segmenter(model: Segmenter | ALNet, device: str | torch.device | None = None) -> Segmenter:
    """``model`` as a segmenter on ``device`` (``None``: where it is); a bare network is wrapped (copied)."""
    if isinstance(model, Segmenter):
        return model.to(device)
    if isinstance(model, ALNet):
        return Segmenter.from_network(model, device=device)
    raise TypeError(f"expected a Segmenter (napari_alnet.load_model) or an ALNet, got {type(model).__name__}")


def load_model(name_or_path: str | Path, device: str | torch.device | None = None) -> Segmenter:
    """The ``Segmenter`` of a built-in model name (``em``, ``fundus``, ``dermoscopy``) or a weight file."""
    return Segmenter.load(name_or_path, device)


def predict(model: Segmenter | ALNet, image: np.ndarray, *, device: str | torch.device | None = None,
            tile: int | None = None, overlap: int = 64, batch_size: int = 4, tta: bool = False,
            rgb: bool | None = None) -> np.ndarray:
    """float32 foreground probabilities of ``image`` (see ``inference.probability_job`` for the parameters).

    ``device``: ``None`` runs where the model is; another device runs a copy there (``model`` is not moved).
    """
    return as_segmenter(model, device).predict(image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta,
                                               rgb=rgb)
