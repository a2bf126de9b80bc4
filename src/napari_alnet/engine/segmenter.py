"""``Segmenter``: a model ready to segment — the fused network, its metadata, where it came from, its device and
the numeric precision it runs in.

What ``load_model`` returns. Declared attributes instead of attributes patched onto an ``nn.Module``; the network
is private to the segmenter (built from a copy, never the caller's module) and is never modified afterwards, so
``segmenter.to("cuda")`` gives a second segmenter and leaves the first where it was, and
``segmenter.with_precision("bf16")`` gives a second one sharing the (unmodified) network. ``int8`` runs the
model's quantized graph (``quantized``; found beside the weight file) instead of the network.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.weights import load_weights, resolve_weights
from ..model.family import family_of
from ..model.metadata import ModelMetadata
from ..model.network import ForwardPasses, SegmentationNetwork, is_network
from .devices import PRECISION_CHOICES, PRECISIONS, PrecisionChoice, check_precision, choose_precision, resolve_device
from .inference import probability_job
from .progress import Job, run_job
from .quantized import QuantizedNetwork, graph_for, measure_fastest, onnxruntime_available
from .tiling import STRIDE as GRID

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "Prediction", "Segmenter", "as_segmenter", "load_model", "predict"]


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
    """A fused, eval-mode network (AL-Net or another registered family) on one device with the metadata of its
    weight file.

    Build one with ``Segmenter.load(name_or_path)`` or ``Segmenter.from_network(net, metadata)``; the dataclass
    constructor expects ``network`` already fused, in eval mode and on ``device`` (it is taken as is).

    ``precision`` is what it runs in (``fp32``, ``bf16``, ``fp16`` or ``int8``, never ``auto``);
    ``requested_precision`` what was asked for: ``auto`` is decided again for each device by ``to(device)`` (see
    ``devices.choose_precision``), an explicit precision is kept. ``None`` means the precision itself.
    ``int8_graph``: the model's quantized graph where it may run (``quantized.graph_for``), else ``None``.
    """

    network: SegmentationNetwork
    metadata: ModelMetadata
    #: Built-in name or weight file it was loaded from (``"network"`` for an in-memory one).
    source: str
    device: torch.device
    precision: str = "fp32"
    requested_precision: str | None = None
    int8_graph: Path | None = None

    def __post_init__(self) -> None:
        check_network(self.network)
        if not self.network.is_reparameterized:
            raise ValueError("Segmenter needs a re-parameterized network; use Segmenter.from_network(net)")
        check_precision(self.precision, self.device)
        if self.precision == "int8" and self.int8_graph is None:
            raise ValueError("precision int8 needs the model's quantized graph (int8_graph)")
        if self.requested_precision not in (None, *PRECISION_CHOICES):
            raise ValueError(f"requested_precision must be one of {PRECISION_CHOICES}, got "
                             f"{self.requested_precision!r}")

    @classmethod
    def load(cls, name_or_path: str | Path, device: str | torch.device | None = None,
             precision: str = "auto") -> Segmenter:
        """The model stored under a built-in name or in a weight file, on ``device`` (``None``: the best here), in
        ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8``)."""
        path = resolve_weights(name_or_path)
        network, metadata = load_weights(path)
        return cls.from_network(network, metadata, source=str(name_or_path), device=device, precision=precision,
                                int8_graph=graph_for(path, metadata.card), take=True)

    @classmethod
    def from_network(cls, network: SegmentationNetwork, metadata: ModelMetadata | None = None, *,
                     source: str = "network", device: str | torch.device | None = None, precision: str = "auto",
                     int8_graph: Path | None = None, take: bool = False) -> Segmenter:
        """A segmenter of a copy of ``network`` (training or fused form; the caller's module is left untouched).

        ``metadata``: defaults for the network's config when ``None``; ``device``: ``None`` keeps the network's;
        ``precision``: ``auto`` (see ``devices.choose_precision``) or a precision; ``int8_graph``: its quantized
        graph (``quantized.quantize``), needed for int8. ``take``: use ``network`` itself, not a copy (``load``,
        whose network nobody else holds: the copy was 0.07-0.11 s of every start).
        """
        check_network(network)
        dev = _device_of(network) if device is None else resolve_device(device)
        meta = metadata if metadata is not None else ModelMetadata(config=network.config)
        if meta.family != family_of(network):
            raise ValueError(f"the metadata is of the network family {meta.family.name!r}, but the network given "
                             f"is of the family {family_of(network).name!r}")
        _choice(precision, dev, meta.card, int8_graph)  # refuses before the copy
        net = network if take else copy.deepcopy(network)
        if not net.is_reparameterized:
            net.reparameterize()
        net = _placed(net, dev)
        choice = _choice(precision, dev, meta.card, int8_graph, net)
        return cls(net, meta, source, dev, choice.precision, _requested(precision), int8_graph)

    def to(self, device: str | torch.device | None, precision: str | None = None) -> Segmenter:
        """The same model on ``device`` (``None``: this one) in ``precision`` (``None``: as requested so far, so
        ``auto`` is decided again for the new device): ``self`` when nothing changes, else a new segmenter —
        holding a copy of the network on another device, sharing it otherwise; ``self`` is never changed."""
        dev = self.device if device is None else resolve_device(device)
        requested = self.requested if precision is None else precision
        _choice(requested, dev, self.metadata.card, self.int8_graph)  # refuses before a copy
        keep = _requested(requested)
        network = self.network if dev == self.device else _placed(copy.deepcopy(self.network), dev)
        choice = _choice(requested, dev, self.metadata.card, self.int8_graph, network)
        if dev == self.device and choice.precision == self.precision and keep == self.requested_precision:
            return self
        return Segmenter(network, self.metadata, self.source, dev, choice.precision, keep, self.int8_graph)

    def with_precision(self, precision: str) -> Segmenter:
        """The same model on the same device in ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``, ``int8``);
        ``self`` is never changed (see ``to``)."""
        return self.to(None, precision)

    @property
    def requested(self) -> str:
        """What was asked for: ``auto`` or a precision."""
        return self.requested_precision or self.precision

    @property
    def precision_choice(self) -> PrecisionChoice:
        """The precision and why it was chosen (what ``auto`` saw on this device, or that it was asked for)."""
        return _choice(self.requested, self.device, self.metadata.card, self.int8_graph, self.network)

    @property
    def runner(self) -> ForwardPasses:
        """What runs the forward passes: the network, or in int8 its quantized graph (``inference.Context``)."""
        if self.precision == "int8":
            return QuantizedNetwork(self.int8_graph, self.network.config)
        return self.network

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    def predict_job(self, image: np.ndarray, *, tile: int | None = None, overlap: int = 64,
                    batch_size: int | None = None, tta: bool = False, rgb: bool | None = None,
                    out: np.ndarray | None = None) -> Job[Prediction | None]:
        """``inference.probability_job`` as a ``Job`` returning a ``Prediction`` (``None`` when stopped).

        The image is checked at once (a ``ValueError`` here, not at the first step). ``out``: see ``predict``.
        """
        job = probability_job(self, image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta, rgb=rgb,
                              out=out)
        return self._timed(job)

    def _timed(self, job: Job[np.ndarray | None]) -> Job[Prediction | None]:
        start = time.perf_counter()
        probs = yield from job
        if probs is None:
            return None
        return Prediction(probs, str(self.device), self.precision, time.perf_counter() - start)

    def predict(self, image: np.ndarray, *, tile: int | None = None, overlap: int = 64,
                batch_size: int | None = None, tta: bool = False, rgb: bool | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
        """float32 foreground probabilities with the image's spatial shape (see ``inference.probability_job``).

        ``out``: an array of the image's spatial shape (float32, float64, float16 or uint8 = round(255 p); a
        ``numpy.memmap`` works) written as tiles finish and returned instead of a new float32 array, so a plane
        over the whole-plane limit never holds its probabilities twice (e.g. float16: half the memory).
        """
        job = self.predict_job(image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta, rgb=rgb, out=out)
        return run_job(job).probabilities

    def __repr__(self) -> str:
        return (f"Segmenter(source={self.source!r}, modality={self.metadata.modality!r}, device={str(self.device)!r}, "
                f"precision={self.precision!r}, requested={self.requested!r})")


def check_network(network: object) -> None:
    """``TypeError`` for what is not a ``SegmentationNetwork``; ``ValueError`` for one whose stride the engine
    cannot tile (tiles, halos and the pooled context lie on a ``GRID``-pixel grid) or whose family is not
    registered (``model.family.UnknownFamily``)."""
    if not is_network(network):
        raise TypeError(f"expected a segmentation network (an nn.Module with the members of "
                        f"model.network.SegmentationNetwork), got {type(network).__name__}")
    family_of(network)
    if network.stride != GRID:
        raise ValueError(f"{type(network).__name__} has a total stride of {network.stride}; the engine tiles and "
                         f"pools context on a {GRID}-pixel grid and runs networks of stride {GRID} only")


def _device_of(network: SegmentationNetwork) -> torch.device:
    return next(network.parameters()).device


def _placed(network: SegmentationNetwork, device: torch.device) -> SegmentationNetwork:
    """``network`` (a private copy) in eval mode on ``device``, channels-last on CPU."""
    network = network.to(device).eval()
    if device.type == "cpu":
        network = network.to(memory_format=torch.channels_last)
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def as_segmenter(model: Segmenter | SegmentationNetwork, device: str | torch.device | None = None) -> Segmenter:
    """``model`` as a segmenter on ``device`` (``None``: where it is); a bare network is wrapped (copied)."""
    if isinstance(model, Segmenter):
        return model.to(device)
    if is_network(model):
        return Segmenter.from_network(model, device=device)
    raise TypeError(f"expected a Segmenter (napari_alnet.load_model) or a network (an ALNet), got "
                    f"{type(model).__name__}")


def load_model(name_or_path: str | Path, device: str | torch.device | None = None,
               precision: str = "auto") -> Segmenter:
    """The ``Segmenter`` of a built-in model name (``em``, ``fundus``, ``dermoscopy``) or a weight file, on
    ``device`` in ``precision`` (``auto``: fp16 on CUDA; on a CPU the fastest precision its card validates — int8
    where validated and measured fastest here, bf16 where native —, else fp32; see ``devices.choose_precision``)."""
    return Segmenter.load(name_or_path, device, precision)


def _choice(requested: str | None, device: torch.device, card: dict, graph: Path | None,
            network: SegmentationNetwork | None = None) -> PrecisionChoice:
    """``devices.choose_precision`` for a model with quantized ``graph`` (or none); with the placed ``network``,
    ``auto`` measures the validated candidates when int8 is one of them."""
    if not onnxruntime_available():
        unavailable = "onnxruntime is not installed (pip install onnxruntime)"
    else:
        unavailable = None if graph is not None else "no quantized int8 graph for this model"
    measure = None if network is None or graph is None else (lambda c: measure_fastest(network, graph, c))
    return choose_precision(requested, device, card, int8_unavailable=unavailable, fastest=measure)


def _requested(precision: str | None) -> str | None:
    """What to keep as ``requested_precision``: ``auto`` (decided per device), or ``None`` for an explicit one."""
    return "auto" if precision is None or str(precision).lower() == "auto" else None


def predict(model: Segmenter | SegmentationNetwork, image: np.ndarray, *, device: str | torch.device | None = None,
            tile: int | None = None, overlap: int = 64, batch_size: int | None = None, tta: bool = False,
            rgb: bool | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """float32 foreground probabilities of ``image`` (see ``inference.probability_job`` for the parameters).

    ``device``: ``None`` runs where the model is; another device runs a copy there (``model`` is not moved).
    ``out``: the caller's array to write into and return (see ``Segmenter.predict``).
    """
    return as_segmenter(model, device).predict(image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta,
                                               rgb=rgb, out=out)
