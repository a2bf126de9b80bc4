"""Choosing the compute device: CUDA > MPS > CPU, or an explicit choice."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """Device names usable here, best first (always ends with ``cpu``)."""
    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return [*names, "cpu"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks the best available device; an unavailable explicit choice raises."""
    if device is None or str(device) == "auto":
        return torch.device(available_devices()[0])
    dev = torch.device(device)
    if dev.type not in available_devices():
        raise ValueError(f"device {str(device)!r} is not available here (available: {', '.join(available_devices())})")
    return dev
