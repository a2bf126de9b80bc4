"""Public API: ``load_model`` and ``predict``."""

from __future__ import annotations

from pathlib import Path

import torch

from .devices import resolve_device
from .model import ALNet
from .pretrained import BUILTIN_NAMES, builtin_path, shipped_models
from .weights import ModelMetadata, WeightsError, load_weights


def resolve_weights(name_or_path: str | Path) -> Path:
    """Path of a built-in model name or of a weight file; ``WeightsError`` if neither exists."""
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


def load_model(name_or_path: str | Path, device: str | torch.device | None = None) -> ALNet:
    """A re-parameterized, eval-mode AL-Net on ``device`` with its ``.metadata`` (a ``ModelMetadata``)."""
    model, metadata = load_weights(resolve_weights(name_or_path))
    model.reparameterize()
    model.metadata = metadata
    model.source = str(name_or_path)
    return model.to(resolve_device(device)).eval()


def model_metadata(model: ALNet) -> ModelMetadata:
    """The metadata attached by ``load_model`` (defaults for a freshly built network)."""
    meta = getattr(model, "metadata", None)
    return meta if meta is not None else ModelMetadata(config=model.config)
