"""The ``int8`` precision: the fused network as a statically quantized (QDQ) ONNX graph run by ONNX Runtime (CPU).

One graph per model, ``<weights>.int8.onnx`` beside its weight file (the shipped models carry theirs, a few MB):
inputs ``image`` (N, C, Y, X; Y and X multiples of 32, normalized float32), ``pooled`` (N, C5, 1, 1) and ``own``
(a scalar, 1 or 0); outputs ``logits`` (N, 1, Y, X: the foreground logit, ``l1 - l0`` for two classes) and
``deepest`` (the stride-32 encoder features). The context module's global average is
``own * mean(deepest) + (1 - own) * pooled``: ``own = 1`` for a whole image, ``own = 0`` with the image's pooled
vector for a tile (``tiling``) — one graph, one calibration, exact in both uses. Pass 1 of tiled inference runs
the encoder alone: the sub-graph from ``image`` to ``deepest`` of the same quantized graph.

``quantize(network, metadata, images, out)`` builds a graph: ONNX export of the fused fp32 network, then
``onnxruntime.quantization.quantize_static`` (QDQ, per-channel uint8 weights, uint8 activations, MinMax ranges
calibrated on ``images`` — the model's own training data; the convolutions of the context module and of the
decoder's context branch stay fp32: they run on the stride-32 grid, cost ~7 % of the time, and quantizing them
cost 0.25 points of label agreement on held-out EM training slices). Weights are uint8, not int8: ONNX Runtime's
uint8 x int8 kernels on AVX2 without VNNI multiply with ``vpmaddubsw``, whose int16 pair sums saturate (measured
here: a tiny network's features off by 7.2 against 0.74 for the same graph unfused; the fundus model's label
agreement 99.38 %); uint8 x uint8 does not saturate, so the graph computes the same on every x86 CPU and its
validation holds wherever it runs. ``QuantizedNetwork(path)`` runs it with the
interface ``inference.Context`` uses of a network (``model.network.ForwardPasses``: ``__call__(x, pooled)``,
``deepest_features(x)``, ``config``). Quantized graphs are AL-Net's (their inputs name its stages); ``quantize``
refuses a network of another family.
Whether a graph may be used is the model card's ``card["int8"]`` (``validated``, and ``onnx_sha256`` of the file):
``graph_for`` returns it only where the file is there, matches the card and onnxruntime is installed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io.atomic import atomic_write
from ..model import ALNet
from ..model.alnet import pad_to_stride
from ..model.config import ALNetConfig
from ..model.family import DEFAULT_FAMILY, family_of
from ..model.metadata import ModelMetadata
from ..model.network import SegmentationNetwork
from .devices import Fastest, autocast_dtype
from .normalization import model_input
from .resolution import resample_image
from .tiling import ceil_to

#: What a quantized graph beside ``<name>.safetensors`` is called.
SUFFIX = ".int8.onnx"
ONNX_OPSET = 17
#: Side of the random image the speed check times each candidate on (a typical slice: the ranking of int8 and bf16
#: was seen to differ between 256² and 512²), and the timed calls per candidate (the fastest call counts: other work
#: on the CPU only ever adds time).
MEASURE_SIZE, MEASURE_CALLS = 512, 5
#: The module a background process runs to measure the candidates of a weight file (``engine.speed_check``).
SPEED_CHECK = "napari_alnet.engine.speed_check"
#: Seconds the background measurement waits for the machine to be idle first (the run that started it is
#: usually still segmenting: timed beside it, every candidate would measure the contention, not itself).
IDLE_WAIT = 120
#: The environment variable that turns the background measurement off (``0``).
SPEED_CHECK_SWITCH = "NAPARI_ALNET_SPEED_CHECK"
#: Largest calibration image side (bigger training images are centre-cropped: MinMax ranges need no more).
CALIBRATION_SIZE = 512


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported here (checked without importing it)."""
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked), or one without a spec
        return False


def graph_path(weights: str | Path) -> Path:
    """Where the quantized graph of a weight file lies: ``em.safetensors`` -> ``em.int8.onnx``."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".safetensors") + SUFFIX)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def int8_entry(card: dict[str, Any]) -> dict[str, Any]:
    entry = card.get("int8") if isinstance(card, dict) else None
    return entry if isinstance(entry, dict) else {}


def graph_for(weights: str | Path | None, card: dict[str, Any]) -> Path | None:
    """The quantized graph of a weight file when it may run: present, the file the card names (``onnx_sha256``),
    and onnxruntime installed; else ``None``. (Validation is a separate question: ``devices.int8_validated``.)"""
    if weights is None or not onnxruntime_available():
        return None
    path = graph_path(weights)
    expected = int8_entry(card).get("onnx_sha256")
    if not path.is_file() or not expected or _cached_sha(str(path), path.stat().st_mtime_ns) != expected:
        return None
    return path


@functools.lru_cache(maxsize=16)
def _cached_sha(path: str, _mtime: int) -> str:
    return sha256_file(Path(path))


# --- the graph --------------------------------------------------------------------------------------------------

class _Graph(nn.Module):
    """The fused network with the pooled vector as an input (what is exported)."""

    def __init__(self, network: ALNet) -> None:
        super().__init__()
        self.net = network

    def forward(self, image: torch.Tensor, pooled: torch.Tensor, own: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        *skips, deepest = self.net.encoder(image)
        mixed = own * deepest.mean((2, 3), keepdim=True) + (1 - own) * pooled
        logits = self.net.decoder(skips, self.net.context(deepest, mixed), tuple(image.shape[-2:]))
        if logits.shape[1] == 2:  # two classes: the logit whose sigmoid is the softmax foreground
            logits = logits[:, 1:] - logits[:, :1]
        return logits, deepest


def require_alnet(network: SegmentationNetwork) -> ALNet:
    """``network`` when it is an AL-Net, else ``ValueError``: the quantized graph is built from AL-Net's stages."""
    family = family_of(network)
    if family.name != DEFAULT_FAMILY or not isinstance(network, ALNet):
        raise ValueError(f"int8 quantization builds AL-Net graphs only; this network is of the family "
                         f"{family.name!r} ({family.title}): run it in fp32, bf16 or fp16")
    return network


def export_fp32(network: SegmentationNetwork, path: Path) -> None:
    """The fused fp32 AL-Net as an ONNX graph (see the module docstring) at ``path``."""
    network = require_alnet(network)
    if network.config.num_classes > 2:
        raise ValueError(f"int8 supports networks of 1 or 2 classes, not {network.config.num_classes}")
    net = _Graph(network).to(memory_format=torch.contiguous_format).float().cpu().eval()
    width = network.config.stage_widths[-1]
    side = 2 * network.stride
    example = (torch.zeros(1, network.config.in_channels, side, side), torch.zeros(1, width, 1, 1),
               torch.ones(()))
    axes = {0: "batch", 2: "y", 3: "x"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(path), dynamo=False, input_names=["image", "pooled", "own"],
                          output_names=["logits", "deepest"], opset_version=ONNX_OPSET,
                          dynamic_axes={"image": axes, "pooled": {0: "batch"}, "logits": axes,
                                        "deepest": {0: "batch", 2: "y32", 3: "x32"}})


def calibration_inputs(images: Iterable[np.ndarray], meta: ModelMetadata) -> Iterator[dict[str, np.ndarray]]:
    """The graph's feeds for calibration: each image brought to the network's resolution and normalized as the
    engine does, centre-cropped to ``CALIBRATION_SIZE`` and edge-padded to a multiple of 32."""
    for image in images:
        image = np.asarray(image)
        x = model_input(resample_image(image, meta.network_shape(image.shape[:2])), meta)
        h, w = x.shape[1:]
        top, left = max(0, (h - CALIBRATION_SIZE) // 2), max(0, (w - CALIBRATION_SIZE) // 2)
        x = x[:, top:top + CALIBRATION_SIZE, left:left + CALIBRATION_SIZE]
        h, w = x.shape[1:]
        x = np.pad(x, ((0, 0), (0, ceil_to(h) - h), (0, ceil_to(w) - w)), mode="edge")
        width = meta.config.stage_widths[-1]
        yield {"image": x[None], "pooled": np.zeros((1, width, 1, 1), np.float32), "own": np.ones((), np.float32)}


def quantize(network: SegmentationNetwork, meta: ModelMetadata, images: Iterable[np.ndarray], out: str | Path
             ) -> Path:
    """A statically quantized graph of the fused AL-Net ``network`` at ``out``, calibrated on ``images`` (raw 2D
    images at the network's resolution, like its training data); ``ValueError`` for another family."""
    from onnxruntime import quantization as q  # optional at import time: int8 is only built where it is installed

    require_alnet(network)
    out = Path(out)
    feeds = list(calibration_inputs(images, meta))
    if not feeds:
        raise ValueError("int8 calibration needs at least one image")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="alnet-int8-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        export_fp32(network, fp32)
        q.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        q.quantize_static(str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QUInt8,
                          calibrate_method=q.CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
                          nodes_to_exclude=fp32_convolutions(prepared))
    return out


def fp32_convolutions(path: Path) -> list[str]:
    """The convolutions kept in fp32: the context module's and the decoder's context branch (its ``high``
    projection and the classifier applied to it), named as the exporter scopes them."""
    import onnx

    names = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    return [n for n in names if n.startswith(("/context/", "/decoder/high/")) or n == "/decoder/Conv"]


# --- running it -------------------------------------------------------------------------------------------------

def session_options(threads: int) -> Any:
    """ONNX Runtime's options as the engine runs it: ``threads`` intra-op threads, one inter-op, and idle threads
    that sleep where OpenMP's are told to (``OMP_WAIT_POLICY=PASSIVE``), else ONNX Runtime's own short spin."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=8)
def _whole(path: str, threads: int) -> Any:
    return _session(path, threads)


@functools.lru_cache(maxsize=8)
def _encoder(path: str, threads: int) -> Any:
    """The sub-graph from ``image`` to ``deepest`` (tiled inference's pass 1), cut out on first use."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="alnet-int8-") as tmp:
        encoder = Path(tmp) / "encoder.onnx"
        onnx.utils.extract_model(path, str(encoder), ["image"], ["deepest"], check_model=False)
        return _session(str(encoder), threads)


class QuantizedNetwork:
    """A quantized AL-Net graph with the interface ``inference.Context`` uses of a network (``ForwardPasses``; CPU
    tensors in, out)."""

    def __init__(self, path: str | Path, config: ALNetConfig, threads: int | None = None) -> None:
        self.path, self.config = Path(path), config
        self.threads = torch.get_num_threads() if threads is None else threads

    def __call__(self, x: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, Y, X) float32 foreground logits (``pooled``: the image's context vector for a tile)."""
        h, w = x.shape[-2:]
        image = _array(pad_to_stride(x))
        width = self.config.stage_widths[-1]
        feeds = {"image": image, "own": np.array(1.0 if pooled is None else 0.0, np.float32),
                 "pooled": (np.zeros((len(image), width, 1, 1), np.float32) if pooled is None
                            else _array(pooled.expand(len(image), -1, -1, -1)))}
        logits = _whole(str(self.path), self.threads).run(["logits"], feeds)[0]
        return torch.from_numpy(logits)[..., :h, :w]

    def deepest_features(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-32 encoder features of ``x`` (padded to a multiple of 32)."""
        encoder = _encoder(str(self.path), self.threads)
        return torch.from_numpy(encoder.run(None, {"image": _array(pad_to_stride(x))})[0])


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def measure_fastest(network: SegmentationNetwork, graph: Path, candidates: tuple[str, ...]) -> Fastest | None:
    """The fastest of ``candidates`` (fp32, bf16: ``network`` in torch; int8: ``graph``) on this CPU, as kept in
    ``speed_cache()`` for this CPU model, library versions, graph (SHA-256), candidates and thread count.

    Not measured yet: ``None``, and a background process (``engine.speed_check``, lowest priority) measures the
    weight file beside ``graph`` once and keeps the figures, so no run waits for the measurement and later ones
    choose by it (docs/performance.md). A graph without its weight file is measured here and now."""
    threads = torch.get_num_threads()
    key = speed_key(graph, candidates, threads)
    known = _read_speeds().get(key)
    if isinstance(known, dict) and known.get("precision") in candidates:
        return Fastest(known["precision"], {str(k): float(v) for k, v in dict(known.get("ms", {})).items()})
    weights = weights_of(graph)
    if weights.is_file():
        _measure_later(str(weights), tuple(candidates), threads)
        return None
    return keep_speeds(key, _measured(network, str(graph), tuple(candidates), threads))


def speed_key(graph: Path, candidates: tuple[str, ...], threads: int) -> str:
    """What a speed measurement holds for: this CPU model, the library versions, the graph, candidates, threads."""
    return "|".join([_cpu_name(), platform.machine(), f"torch {torch.__version__}", _ort_version(),
                     _cached_sha(str(graph), Path(graph).stat().st_mtime_ns), ",".join(candidates),
                     f"{threads} threads", f"{MEASURE_SIZE} px", _wait_policy()])


def _wait_policy() -> str:
    """How this process's OpenMP threads wait (``engine.threads``): sleeping threads slow torch's bf16 ~2x and not
    ONNX Runtime's int8 alike, so each policy keeps its own figures."""
    return f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'default').upper()}"


def keep_speeds(key: str, found: Fastest) -> Fastest:
    """Add ``found`` to ``speed_cache()`` under ``key`` (atomically; a cache that cannot be written is skipped)."""
    with contextlib.suppress(Exception):  # a cache that cannot be written must never stop inference
        speeds = _read_speeds() | {key: {"precision": found.precision, "ms": found.ms}}
        cache = speed_cache()
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps(speeds, indent=1)))
    return found


def weights_of(graph: str | Path) -> Path:
    """The weight file a quantized graph belongs to: ``em.int8.onnx`` -> ``em.safetensors``."""
    graph = Path(graph)
    return graph.with_name(graph.name.removesuffix(SUFFIX) + ".safetensors")


@functools.lru_cache(maxsize=16)
def _measure_later(weights: str, candidates: tuple[str, ...], threads: int) -> None:
    """Start the background measurement of ``weights`` (once per process and weight file; never where
    ``NAPARI_ALNET_SPEED_CHECK=0``, e.g. a cluster job: int8 is then used where asked for)."""
    if os.environ.get(SPEED_CHECK_SWITCH, "1").strip() == "0":
        return
    command = [sys.executable, "-m", SPEED_CHECK, weights, "--candidates", ",".join(candidates),
               "--threads", str(threads), "--wait-idle", str(IDLE_WAIT)]
    with contextlib.suppress(OSError):  # no measurement: auto keeps to torch's precisions
        start_background(command)


def start_background(command: list[str]) -> None:
    """Run ``command`` detached (its own session, no terminal output); the caller does not wait for it."""
    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def speed_cache() -> Path:
    """The file of speed measurements: ``$NAPARI_ALNET_CACHE`` or ``$XDG_CACHE_HOME`` (``~/.cache``)
    ``/napari-alnet``, ``precision-speeds.json``."""
    base = os.environ.get("NAPARI_ALNET_CACHE")
    folder = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-alnet"
    return folder / "precision-speeds.json"


def _read_speeds() -> dict[str, Any]:
    try:
        data = json.loads(speed_cache().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def _ort_version() -> str:
    try:
        return f"onnxruntime {importlib.metadata.version('onnxruntime')}"
    except importlib.metadata.PackageNotFoundError:
        return "onnxruntime ?"


@functools.lru_cache(maxsize=16)
def _measured(network: SegmentationNetwork, graph: str, candidates: tuple[str, ...], threads: int) -> Fastest:
    x = torch.randn(1, network.config.in_channels, MEASURE_SIZE, MEASURE_SIZE)
    quantized = QuantizedNetwork(graph, network.config, threads)
    calls = {p: _torch_call(network, x, p) for p in candidates if p != "int8"}
    if "int8" in candidates:
        calls["int8"] = lambda: quantized(x)
    times: dict[str, list[float]] = {p: [] for p in calls}
    for round_ in range(MEASURE_CALLS + 1):
        for precision, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:  # the first round warms up
                times[precision].append(time.perf_counter() - start)
    ms = {p: min(t) * 1000 for p, t in times.items()}
    return Fastest(min(ms, key=ms.__getitem__), ms)


def _torch_call(network: SegmentationNetwork, x: torch.Tensor, precision: str):
    x = x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(precision)

    def call() -> None:
        with torch.inference_mode(), (torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()):
            network(x)
    return call


def clear_sessions() -> None:
    """Drop the cached ONNX Runtime sessions (tests; another thread count)."""
    _whole.cache_clear()
    _encoder.cache_clear()
    _measured.cache_clear()
    _measure_later.cache_clear()
    _cached_sha.cache_clear()


__all__ = ["SUFFIX", "QuantizedNetwork", "graph_for", "graph_path", "measure_fastest", "onnxruntime_available",
           "quantize"]
