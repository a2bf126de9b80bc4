"""Choosing the compute device (CUDA > MPS > CPU, or an explicit choice) and the numeric precision to run in.

Precision: ``fp32``; ``bf16`` (bfloat16 autocast: on a CPU only worth it where the processor computes bf16
natively — AVX-512-BF16 or AMX — elsewhere oneDNN emulates it several times slower than fp32); ``fp16`` (float16
autocast, CUDA only); ``int8`` (CPU only: the model's statically quantized ONNX graph in ONNX Runtime, see
``quantized``). ``auto`` picks fp16 on CUDA; on a CPU it considers fp32, bf16 where it is native *and* the model card
records that bf16 was validated against fp32 on the model's test split (``card["bf16"]["validated"]``), and int8
where the card records int8 as validated (``card["int8"]["validated"]``) and its graph can run here; of those it
takes the fastest as measured on this CPU (``fastest``: figures kept across processes) when int8 is among them,
else — and while int8's speed here is not measured yet (a background process measures it once) — bf16 where it is
a candidate (native bf16 beats fp32), else fp32.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: Numeric precisions a segmenter can run in.
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
#: What may be asked for: a precision or ``auto``.
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: oneDNN's ISA names (``ONEDNN_MAX_CPU_ISA``), lowest first; from ``AVX512_CORE_BF16`` on it may use bf16 natively.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL")
_FIRST_BF16_ISA = ONEDNN_ISAS.index("AVX512_CORE_BF16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}") from None
    if dev.type not in available_devices():
        raise ValueError(f"device {str(device)!r} is not available here (available: {', '.join(available_devices())})")
    return dev


# --- native bf16 on this CPU ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BF16Support:
    """Whether this CPU computes bf16 natively (``native``) and why (``reason``, one line)."""

    native: bool
    reason: str


def cpuinfo_flags(path: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (``None`` where there is no such file)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def torch_cpu_capabilities() -> dict[str, Any]:
    """``torch.cpu.get_capabilities()`` (cpuinfo, any OS) where this torch has it, else ``{}``."""
    getter = getattr(torch.cpu, "get_capabilities", None)
    try:
        return dict(getter()) if getter is not None else {}
    except Exception:  # a capability probe must never stop inference
        return {}


def onednn_isa_cap(environ: dict[str, str] | None = None) -> str | None:
    """The ISA ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) caps oneDNN at, upper-cased; ``None``."""
    environ = os.environ if environ is None else environ
    value = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def detect_bf16(flags: set[str] | None, capabilities: dict[str, Any], isa_cap: str | None,
                mkldnn_bf16: bool) -> BF16Support:
    """The decision of ``cpu_bf16_support`` from its inputs (pure, for tests).

    Native needs an x86 CPU with AVX-512-BF16 or AMX-BF16 (in ``/proc/cpuinfo`` flags where there are any, else
    in torch's capabilities), oneDNN's bf16 support, and no ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16``.
    """
    arch = str(capabilities.get("architecture", "x86_64"))
    if "x86" not in arch and "amd64" not in arch.lower():
        return BF16Support(False, f"{arch} CPU: bf16 is only used natively on x86 (AVX-512-BF16 or AMX)")
    found = [f for f in _BF16_FLAGS if f in flags] if flags else [f for f in _BF16_FLAGS if capabilities.get(f)]
    source = "/proc/cpuinfo" if flags else "torch.cpu.get_capabilities()"
    if not found:
        return BF16Support(False, f"no avx512_bf16 or amx_bf16 in {source}: bf16 would be emulated (slow)")
    if isa_cap is not None and isa_cap in ONEDNN_ISAS and ONEDNN_ISAS.index(isa_cap) < _FIRST_BF16_ISA:
        return BF16Support(False, f"ONEDNN_MAX_CPU_ISA={isa_cap} caps oneDNN below AVX512_CORE_BF16")
    if not mkldnn_bf16:
        return BF16Support(False, f"{'/'.join(found)} present but this torch's oneDNN does not support bf16")
    return BF16Support(True, f"native bf16: {', '.join(found)}" + (f" (ONEDNN_MAX_CPU_ISA={isa_cap})" if isa_cap
                                                                     else ""))


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> BF16Support:
    """Does this CPU compute bf16 natively (as oneDNN will run it in this process)? Cached."""
    mkldnn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        mkldnn_bf16 = bool(mkldnn()) if mkldnn is not None else torch.backends.mkldnn.is_available()
    except Exception:
        mkldnn_bf16 = False
    return detect_bf16(cpuinfo_flags(), torch_cpu_capabilities(), onednn_isa_cap(), mkldnn_bf16)


# --- choosing a precision -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a segmenter runs in and why (one line: what ``auto`` saw, or that it was asked for)."""

    precision: str
    reason: str


def validated_in_card(card: dict[str, Any], precision: str) -> bool:
    """Whether a model card records ``precision`` as validated against fp32 (``card[precision]["validated"] is
    True``)."""
    entry = card.get(precision) if isinstance(card, dict) else None
    return isinstance(entry, dict) and entry.get("validated") is True


def bf16_validated(card: dict[str, Any]) -> bool:
    """Whether a model card records bf16 as validated against fp32 (``card["bf16"]["validated"] is True``)."""
    return validated_in_card(card, "bf16")


def int8_validated(card: dict[str, Any]) -> bool:
    """Whether a model card records int8 as validated against fp32 (``card["int8"]["validated"] is True``)."""
    return validated_in_card(card, "int8")


@dataclass(frozen=True)
class Fastest:
    """What a speed measurement found: the fastest ``precision`` and the ms per call of each candidate."""

    precision: str
    ms: dict[str, float]

    def __str__(self) -> str:
        return ", ".join(f"{p} {ms:.0f} ms" for p, ms in sorted(self.ms.items(), key=lambda kv: kv[1]))


#: The measured speeds of candidate precisions on this CPU (``quantized.measure_fastest`` bound to a model); None
#: while they are not measured yet.
Measure = Callable[[tuple[str, ...]], Fastest | None]


def choose_precision(requested: str | None, device: torch.device, card: dict[str, Any], *,
                     int8_unavailable: str | None = "no quantized int8 graph for this model",
                     fastest: Measure | None = None) -> PrecisionChoice:
    """The precision to run in on ``device`` for a model with model card ``card`` (``None`` = ``auto``).

    ``int8_unavailable``: why int8 cannot run for this model here (``None``: it can). ``fastest``: measures
    candidates on this CPU; without it ``auto`` never picks int8 (it is chosen by measurement, never by guess).
    ``ValueError`` for an unknown name or one the device cannot run (fp16 needs CUDA; bf16 a CPU or a CUDA GPU
    with bf16; int8 a CPU and the model's graph).
    """
    requested = "auto" if requested is None else str(requested).lower()
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    if requested != "auto":
        check_precision(requested, device)
        if requested == "int8" and int8_unavailable is not None:
            raise ValueError(f"precision int8 cannot run for this model: {int8_unavailable}; use fp32 or auto")
        return PrecisionChoice(requested, f"{requested} as requested")
    if device.type == "cuda":
        return PrecisionChoice("fp16", "auto: fp16 autocast on CUDA")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 on {device.type}")
    return _auto_cpu(card, int8_unavailable, fastest)


def _auto_cpu(card: dict[str, Any], int8_unavailable: str | None, fastest: Measure | None) -> PrecisionChoice:
    support = cpu_bf16_support()
    notes = []
    if not support.native:
        notes.append(support.reason)
    elif not bf16_validated(card):
        notes.append(f"native bf16 here, but {bf16_verdict(card)}")
    candidates = ("fp32", *(("bf16",) if support.native and bf16_validated(card) else ()))
    if int8_validated(card):
        if int8_unavailable is None and fastest is not None:
            candidates = (*candidates, "int8")
        else:
            notes.append(f"int8 validated but not usable here: {int8_unavailable or 'not measured'}")
    found = fastest(candidates) if "int8" in candidates else None
    if found is not None:
        return PrecisionChoice(found.precision, f"auto: {found.precision}, the fastest validated precision "
                                                f"measured on this CPU ({found})")
    if "int8" in candidates:
        notes.append("int8 validated, its speed on this CPU not measured yet (measuring in the background; later "
                     "runs choose the fastest)")
        candidates = candidates[:-1]
    if "bf16" in candidates:
        note = "".join(f"; {n}" for n in notes)
        return PrecisionChoice("bf16", f"auto: bf16 ({support.reason}; validated in the model card{note})")
    return PrecisionChoice("fp32", f"auto: fp32 ({'; '.join(notes) or 'no other validated precision'})")


def bf16_verdict(card: dict[str, Any]) -> str:
    """Why a model card's bf16 is not validated, in a phrase: not checked, skipped (and why), or failed the guard."""
    entry = card.get("bf16") if isinstance(card, dict) else None
    if not isinstance(entry, dict):
        return "the model card does not record bf16 as validated for this model"
    if entry.get("skipped"):
        return f"the model card's bf16 check was skipped ({entry['skipped']})"
    if "max_metric_change" in entry or "label_agreement" in entry:
        return (f"bf16 failed the model card's accuracy guard (largest metric change {entry.get('max_metric_change')}"
                f", label agreement {entry.get('label_agreement')})")
    return "the model card does not record bf16 as validated for this model"


def check_precision(precision: str, device: torch.device) -> None:
    """``ValueError`` unless ``device`` can run ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 runs on CUDA only (device {device.type}); use fp32 or bf16")
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"precision bf16 runs on cpu or cuda, not {device.type}; use fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA GPU has no bf16; use fp16 or fp32")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU only (device {device.type}); use fp16 or fp32")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision (``None`` for fp32 and int8: no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}[precision]
