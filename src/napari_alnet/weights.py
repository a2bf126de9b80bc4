"""The one way to write and read AL-Net weight files: safetensors plus JSON metadata.

Loading never unpickles anything, so opening a file runs no code. Saving is atomic.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import ALNet, ALNetConfig
from .normalization import Normalization
from .resolution import network_shape

FORMAT = "napari-alnet"
FORMAT_VERSION = "1"


class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file and the problem."""


@dataclass
class ModelMetadata:
    """Everything a weight file says about its network besides the tensors."""

    config: ALNetConfig = field(default_factory=ALNetConfig)
    modality: str = "generic"
    normalization: Normalization = field(default_factory=Normalization)
    threshold: float = 0.5
    #: How to give an RGB image to a 1-channel model: ``luminance`` converts, ``refuse`` raises.
    rgb_to_gray: str = "luminance"
    #: Which pixels make up objects for instance labels: ``foreground``, or ``background`` (EM membranes: the
    #: cells are the regions between the predicted membranes).
    objects: str = "foreground"
    #: Models trained at a fixed reduced resolution (dermoscopy): images are resized to (H, W) for the network
    #: and the probabilities resized back; ``None`` = native resolution.
    input_size: tuple[int, int] | None = None
    #: Models trained on zoomed images (``alnet train --scale``): every image is resized by this factor for the
    #: network and the probabilities resized back. Ignored when ``input_size`` is set.
    input_scale: float = 1.0
    #: Model card: summary, training provenance, metrics (free-form JSON).
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.1 <= self.input_scale <= 8:
            raise ValueError(f"input_scale must be between 0.1 and 8, got {self.input_scale}")

    def network_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (Y, X) at which this model's network sees an image of spatial ``shape``."""
        return network_shape(shape, self.input_size, self.input_scale)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def summary(self) -> str:
        return str(self.card.get("summary", f"AL-Net ({self.modality}, {self.in_channels}-channel input)"))

    def to_strings(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_json(),
            "modality": self.modality,
            "in_channels": str(self.in_channels),
            "normalization": self.normalization.to_json(),
            "threshold": repr(float(self.threshold)),
            "rgb_to_gray": self.rgb_to_gray,
            "objects": self.objects,
            "input_size": json.dumps(list(self.input_size) if self.input_size else None),
            "input_scale": repr(float(self.input_scale)),
            "card": json.dumps(self.card, sort_keys=True),
        }

    @classmethod
    def from_strings(cls, meta: dict[str, str]) -> ModelMetadata:
        return cls(
            config=ALNetConfig.from_json(meta["config"]),
            modality=meta.get("modality", "generic"),
            normalization=Normalization.from_json(meta["normalization"]),
            threshold=float(meta.get("threshold", "0.5")),
            rgb_to_gray=meta.get("rgb_to_gray", "luminance"),
            objects=meta.get("objects", "foreground"),
            input_size=_size_or_none(json.loads(meta.get("input_size", "null"))),
            input_scale=float(meta.get("input_scale", "1.0")),
            card=json.loads(meta.get("card", "{}")),
        )


def _size_or_none(value: list[int] | None) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value else None


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``; no partial file is ever visible at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: ALNet, metadata: ModelMetadata, path: str | Path, half: bool = False) -> Path:
    """Write ``model``'s weights and ``metadata`` to ``path`` atomically.

    ``half`` stores floating tensors as float16 (half the size; used for the shipped models).
    """
    path = Path(path)
    form = "fused" if model.is_reparameterized else "training"
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.contiguous()
    # the file describes the network it holds: a caller's metadata may carry another config (e.g. a training run
    # started from a weight file whose network differs from the command line's default)
    strings = replace(metadata, config=model.config).to_strings() | {"form": form}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=strings))
    return path


def _check_header(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        brace = fh.read(1)
    # a safetensors file: 8-byte little-endian header length, then the JSON header; checked first, because the
    # length's low byte may be anything (0x80 included, the pickle marker)
    if len(head) == 8 and brace == b"{" and struct.unpack("<Q", head)[0] <= size - 8:
        return
    if head[:2] == b"PK":
        raise WeightsError(f"{path}: is a zip/PyTorch pickle checkpoint, not a safetensors weight file; "
                           "refusing to load it (pickles can run code)")
    if head[:1] == b"\x80":
        raise WeightsError(f"{path}: is a Python pickle, not a safetensors weight file; refusing to load it "
                           "(pickles can run code)")
    if len(head) < 8:
        raise WeightsError(f"{path}: is truncated or empty ({size} bytes), not a safetensors weight file")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > size - 8:
        raise WeightsError(f"{path}: is truncated or not a safetensors file (header claims {header_len} bytes, "
                           f"file has {size})")


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMetadata, str]:
    """Tensors, metadata and form (``training`` or ``fused``) of a weight file; ``WeightsError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    _check_header(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: is truncated or corrupt ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: is a safetensors file but not an napari-alnet weight file "
                           f"(metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: weight format version {meta.get('format_version')!r} is not supported "
                           f"(this napari-alnet reads version {FORMAT_VERSION})")
    try:
        metadata = ModelMetadata.from_strings(meta)
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: has unreadable metadata ({exc})") from exc
    return tensors, metadata, meta.get("form", "training")


def build_model(tensors: dict[str, torch.Tensor], metadata: ModelMetadata, form: str,
                source: str = "weights") -> ALNet:
    """An ``ALNet`` (training form unless ``form == 'fused'``) holding ``tensors`` as float32."""
    model = ALNet(metadata.config)
    if form == "fused":
        model.reparameterize()
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:3]
        raise WeightsError(f"{source}: tensors do not match the stored AL-Net config: {' '.join(first)}") from exc
    return model


def load_weights(path: str | Path) -> tuple[ALNet, ModelMetadata]:
    """The model stored in ``path`` (training form when stored so, for fine-tuning) and its metadata."""
    tensors, metadata, form = read_weights(path)
    return build_model(tensors, metadata, form, source=str(path)), metadata
