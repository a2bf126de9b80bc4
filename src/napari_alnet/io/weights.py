"""The one way to write and read weight files: safetensors plus JSON metadata.

A file names its network family (``architecture``; files without one, the shipped ones included, are AL-Net) and
loading builds that family's network (``model.family``); an unknown family is refused naming the known ones.

Loading a weight file never unpickles anything, so opening it runs no code. Saving is atomic. Reading also accepts
the bioimage.io packages napari-alnet exports (``bioimageio_package``: their state dict goes through PyTorch's
restricted ``weights_only`` loader, which admits tensors and plain containers only).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..model.config import MAX_PARAMETERS
from ..model.family import DEFAULT_FAMILY, build_network, family_of, known_families
from ..model.metadata import FORMAT, FORMAT_VERSION, ModelMetadata
from ..model.network import SegmentationNetwork
from .atomic import atomic_write
from .bioimageio_package import PackageError, is_package, read_package
from .pretrained import BUILTIN_NAMES, builtin_path, shipped_models


class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file and the problem."""


#: What a weight file may hold, checked from its header before any tensor is read (a real one: ~300 tensors,
#: a header of ~100 KB with the model card, 4-30 MB of tensors).
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 4096
MAX_TENSOR_DIMS = 8
#: Elements in all tensors together: twice the largest network's parameters (BatchNorm buffers besides).
MAX_ELEMENTS = 2 * MAX_PARAMETERS


def save_weights(model: SegmentationNetwork, metadata: ModelMetadata, path: str | Path, half: bool = False) -> Path:
    """Write ``model``'s weights, its family (``architecture``) and ``metadata`` to ``path`` atomically.

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
    strings = replace(metadata, config=model.config).to_strings() | {"architecture": family_of(model).name,
                                                                      "form": form}
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


def _header(path: Path) -> dict:
    """The safetensors JSON header, read only after its length is checked against ``MAX_HEADER_BYTES``, with the
    tensor count, dimensions and element total checked against their limits (before any tensor is read)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > MAX_HEADER_BYTES:
            raise WeightsError(f"{path}: its safetensors header claims {length} bytes (limit {MAX_HEADER_BYTES}: a "
                               "real AL-Net header has ~100 KB); refusing to read it")
        try:
            header = json.loads(fh.read(length))
        except (ValueError, RecursionError) as exc:
            raise WeightsError(f"{path}: is truncated or corrupt (unreadable safetensors header: {exc})") from exc
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: is corrupt (its safetensors header is not a JSON object)")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        raise WeightsError(f"{path}: holds {len(entries)} tensors (limit {MAX_TENSORS}: an AL-Net has ~300)")
    total = 0
    for name, entry in entries.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS
                or not all(isinstance(n, int) and 0 <= n <= MAX_ELEMENTS for n in shape)):
            raise WeightsError(f"{path}: tensor {name[:80]!r} has shape {str(shape)[:80]} (at most "
                               f"{MAX_TENSOR_DIMS} dimensions of at most {MAX_ELEMENTS} entries)")
        total += math.prod(shape)
    if total > MAX_ELEMENTS:
        raise WeightsError(f"{path}: its tensors hold {total} values (limit {MAX_ELEMENTS}: twice the "
                           f"{MAX_PARAMETERS // 10**6} M parameters of the largest AL-Net napari-alnet builds)")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightsError(f"{path}: is corrupt (its safetensors metadata is not a map of strings)")
    return meta


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMetadata, str]:
    """Tensors, metadata and form (``training`` or ``fused``) of a weight file, or of a bioimage.io package
    napari-alnet exported (zip or folder; always fused); ``WeightsError`` if unusable."""
    path = Path(path)
    if is_package(path):
        try:
            tensors, metadata = read_package(path)
        except PackageError as exc:
            raise WeightsError(str(exc)) from exc
        return tensors, metadata, "fused"
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, neither a weight file nor a bioimage.io package (no rdf.yaml)")
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    _check_header(path)
    meta = _header(path)
    metadata = _metadata(path, meta)  # the config's values are checked before a tensor is read
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: is truncated or corrupt ({exc})") from exc
    return tensors, metadata, meta.get("form", "training")


def _metadata(path: Path, meta: dict[str, str]) -> ModelMetadata:
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: is a safetensors file but not an napari-alnet weight file "
                           f"(metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path}: weight format version {meta.get('format_version')!r} is not supported "
                           f"(this napari-alnet reads version {FORMAT_VERSION})")
    family = meta.get("architecture", DEFAULT_FAMILY)
    if family not in known_families():
        raise WeightsError(f"{path}: holds a network of the family {family[:80]!r}, which this napari-alnet does not "
                           f"know (known families: {', '.join(known_families())}); install or register the plugin "
                           "that provides it")
    try:
        metadata = ModelMetadata.from_strings(meta)
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: has unreadable metadata ({exc})") from exc
    return metadata


def build_model(tensors: dict[str, torch.Tensor], metadata: ModelMetadata, form: str,
                source: str = "weights") -> SegmentationNetwork:
    """The network of ``metadata.config``'s family (training form unless ``form == 'fused'``) holding ``tensors`` as
    float32."""
    model = build_network(metadata.config)
    if form == "fused":
        model.reparameterize()
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    # NumPy's check on the tensors' own memory: 1-3 ms for AL-Net's ~340 tensors, 25-60 ms through torch.isfinite
    broken = [k for k, v in state.items() if v.is_floating_point() and not np.isfinite(v.numpy()).all()]
    if broken:
        raise WeightsError(f"{source}: {len(broken)} tensor(s) hold NaN or infinite values ({', '.join(broken[:3])}"
                           f"{', ...' if len(broken) > 3 else ''}); the file is corrupt or its training diverged")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:3]
        raise WeightsError(f"{source}: tensors do not match the stored {metadata.family.title} config: "
                           f"{' '.join(first)}") from exc
    return model


def load_weights(path: str | Path) -> tuple[SegmentationNetwork, ModelMetadata]:
    """The model stored in ``path`` (training form when stored so, for fine-tuning) and its metadata."""
    tensors, metadata, form = read_weights(path)
    return build_model(tensors, metadata, form, source=str(path)), metadata


def resolve_weights(name_or_path: str | Path) -> Path:
    """Path of a built-in model name, a weight file or a bioimage.io package; ``WeightsError`` if none exists."""
    text = str(name_or_path)
    if text in BUILTIN_NAMES:
        path = builtin_path(text)
        if not path.is_file():
            raise WeightsError(f"built-in model {text!r} is not shipped in this installation "
                               f"(shipped: {', '.join(shipped_models()) or 'none'})")
        return path
    path = Path(text).expanduser()
    if not path.exists():
        raise WeightsError(f"{text!r} is neither a built-in model ({', '.join(BUILTIN_NAMES)}) nor an existing file")
    return path
