"""The one configuration object that describes an AL-Net network."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

CONTEXTS = ("lraspp", "aspp", "none")
DECODERS = ("asymmetric", "unet")


@dataclass(frozen=True)
class ALNetConfig:
    """Every width and choice of an AL-Net network; serializes to JSON.

    The defaults are the shipped architecture (see ``docs/architecture.md``).
    """

    in_channels: int = 1
    num_classes: int = 1
    #: RepVGG-A1 stage depths (the paper: 1, 2, 4, 14, 1).
    stage_depths: tuple[int, ...] = (1, 2, 4, 14, 1)
    #: Reduced RepVGG-A1 widths (A1 itself: 64, 64, 128, 256, 1280).
    stage_widths: tuple[int, ...] = (48, 48, 96, 144, 320)
    #: ``lraspp`` (the paper), ``aspp`` (ablation, Table 3) or ``none`` (the paper's "baseline", with ``unet``).
    context: str = "lraspp"
    context_width: int = 128
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    #: ``asymmetric`` (A-Decoder, the paper) or ``unet`` (symmetric U-Decoder, Table 4 / "baseline").
    decoder: str = "asymmetric"
    #: Common width of F1..F4 and of the Flow convolutions.
    decoder_width: int = 32
    #: Grid of the Flow convolutions: 2 = stride-2 grid (default), 1 = full resolution.
    decoder_stride: int = 2
    #: U-Decoder widths from the deepest level up (only for ``decoder="unet"``).
    unet_widths: tuple[int, ...] = (144, 96, 48, 48, 32)

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if len(self.stage_depths) != 5 or len(self.stage_widths) != 5:
            raise ValueError("stage_depths and stage_widths need five entries (five encoder stages)")
        if self.decoder_stride not in (1, 2):
            raise ValueError(f"decoder_stride must be 1 or 2, got {self.decoder_stride}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ALNetConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AL-Net config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def replace(self, **changes) -> ALNetConfig:
        data = asdict(self)
        data.update(changes)
        return ALNetConfig(**data)
