"""The run record: what a resumed run must share with the run that made an output (model, numerics, source,
plan, settings), and how two records differ in words."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import zarr

from ...io.fingerprint import fingerprint
from ...io.volumes import Volume, VolumeError, open_output, record_of
from ..devices import cpu_bf16_support, onednn_isa_cap
from ..segmenter import Segmenter
from .plan import BlockPlan
from .settings import Settings

RECORD_VERSION = 2


def network_digest(segmenter: Segmenter) -> str:
    """A short hash of the network's weights (part of the settings a resumed run must share)."""
    h = hashlib.sha256()
    for name, tensor in sorted(segmenter.network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_identity(segmenter: Segmenter) -> dict[str, str]:
    """Which model made an output: where it came from, a hash of its weights and one of its metadata (card,
    normalization, threshold, ...)."""
    meta = json.dumps(segmenter.metadata.to_strings(), sort_keys=True)
    return {"source": segmenter.source, "weights": network_digest(segmenter),
            "card": hashlib.sha256(meta.encode()).hexdigest()[:16]}


def device_class(device: torch.device) -> str:
    """What of a device changes a block's floating-point results: on a CPU the kernels' instruction set (ATen's,
    oneDNN's cap, native bf16), on a GPU its name."""
    if device.type == "cpu":
        cap = onednn_isa_cap()
        return (f"cpu {torch.backends.cpu.get_cpu_capability()}"
                + (" native-bf16" if cpu_bf16_support().native else "") + (f" oneDNN<={cap}" if cap else ""))
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return device.type


def run_record(segmenter: Segmenter, volume: Volume, plan: BlockPlan, settings: Settings) -> dict[str, Any]:
    """What a resumed run must share with the run that made an output (compared as JSON): the model's identity,
    the numerics (device class, precision, torch threads per block), the source's identity (path, shape, dtype,
    ``io.fingerprint``), the plan and every setting."""
    return _jsonable({"version": RECORD_VERSION, "model": model_identity(segmenter),
                      "numerics": {"device": device_class(segmenter.device), "precision": segmenter.precision,
                                   "threads": settings.threads},
                      "source": {"path": str(volume.path) if volume.path is not None else "array",
                                 "shape": list(volume.data.shape), "dtype": str(volume.reader.dtype),
                                 "fingerprint": fingerprint(volume)},
                      "plan": {"shape": plan.shape, "block": plan.block, "chunks": plan.chunks},
                      "settings": {k: v for k, v in asdict(settings).items()
                                   if k != "threads" and (settings.watershed or not k.startswith("watershed"))}})


def _flat(record: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(old: dict, new: dict) -> str:
    """What differs between two run records: the names, then each value, e.g. ``(numerics.precision):
    numerics.precision fp32 then, bf16 now`` (settings by their bare names)."""
    before, now = _flat(old), _flat(new)
    keys = [k for k in sorted({*before, *now}) if before.get(k) != now.get(k)]
    if not keys:
        return "(unknown)"
    names = [k.removeprefix("settings.") for k in keys]
    details = "; ".join(f"{n} {_short(before.get(k))} then, {_short(now.get(k))} now"
                        for n, k in zip(names, keys, strict=True))
    return f"({', '.join(names)}): {details}"


def _short(value: Any) -> str:
    text = "absent" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def recorded_threads(target: Path | zarr.Group, default: int | None) -> int | None:
    """The torch threads per block an unfinished output at ``target`` was started with (a resume keeps them: a
    block's floating-point results depend on them), else ``default``."""
    try:
        group = open_output(target) if isinstance(target, Path) else target
    except VolumeError:
        return default
    found = record_of(group) if group is not None else None
    numerics = (found or {}).get("run", {}).get("numerics") if not (found or {}).get("complete") else None
    if isinstance(numerics, dict) and "threads" in numerics:
        return numerics["threads"]
    return default
