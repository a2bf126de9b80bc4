"""The one configuration object that describes an AL-Net network."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

CONTEXTS = ("lraspp", "aspp", "none")
DECODERS = ("asymmetric", "unet")
#: The ranges a real AL-Net's values lie in (RepVGG-B3 is 1, 4, 6, 16, 1 blocks of up to 2560 channels; the shipped
#: networks have at most 14 blocks of 320). A config from a file is checked against them before any network is
#: built, so a file asking for absurd widths or depths is refused instead of allocating gigabytes.
LIMITS = {"depth": 32, "width": 2560, "context_width": 1024, "decoder_width": 512, "num_classes": 64,
          "aspp_rates": 8, "aspp_rate": 64}
#: Estimated parameters (training form) at most: 64 M, 256 MB in float32 (RepVGG-A1 has 12.8 M, the shipped 2 M).
MAX_PARAMETERS = 64_000_000
#: Longest config JSON read (a real one is ~400 characters).
MAX_JSON_CHARS = 4096


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
        if self.decoder_stride not in (1, 2):
            raise ValueError(f"decoder_stride must be 1 or 2, got {self.decoder_stride}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        _check_ranges(self)

    def parameters(self) -> int:
        """An upper estimate of the training-form parameter count (3x3 + 1x1 branches, context, decoder)."""
        widths = (self.in_channels, *self.stage_widths)
        encoder = sum(10 * (widths[i] + (d - 1) * widths[i + 1]) * widths[i + 1]
                      for i, d in enumerate(self.stage_depths))
        c, top = self.context_width, self.stage_widths[-1]
        context = 10 * c * (top + c * (len(self.aspp_rates) + 2))
        decoder = 10 * self.decoder_width * (self.decoder_width * 8 + sum(self.stage_widths) + c)
        ups = (c, *self.unet_widths)
        unet = sum(10 * (ups[i] + w + max(self.stage_widths)) * w for i, w in enumerate(self.unet_widths))
        return encoder + context + decoder + (unet if self.decoder == "unet" else 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ALNetConfig:
        if len(text) > MAX_JSON_CHARS:
            raise ValueError(f"the AL-Net config is {len(text)} characters long; a real one has a few hundred "
                             f"(limit {MAX_JSON_CHARS})")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"the AL-Net config is a JSON {type(data).__name__}, expected an object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AL-Net config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def replace(self, **changes) -> ALNetConfig:
        data = asdict(self)
        data.update(changes)
        return ALNetConfig(**data)


def _count(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}] (the range of a real AL-Net), got {value!r}")


def _counts(name: str, values, low: int, high: int, length: tuple[int, int]) -> None:
    if not isinstance(values, tuple) or not length[0] <= len(values) <= length[1]:
        raise ValueError(f"{name} must be a list of {length[0]} to {length[1]} integers, got {values!r:.80}")
    for value in values:
        _count(f"each of {name}", value, low, high)


def _check_ranges(config: ALNetConfig) -> None:
    """``ValueError`` naming the first value outside ``LIMITS`` or an estimate above ``MAX_PARAMETERS``."""
    _count("num_classes", config.num_classes, 1, LIMITS["num_classes"])
    _counts("stage_depths", config.stage_depths, 1, LIMITS["depth"], (5, 5))
    _counts("stage_widths", config.stage_widths, 1, LIMITS["width"], (5, 5))
    _counts("unet_widths", config.unet_widths, 1, LIMITS["width"], (5, 5))
    _counts("aspp_rates", config.aspp_rates, 1, LIMITS["aspp_rate"], (1, LIMITS["aspp_rates"]))
    _count("context_width", config.context_width, 1, LIMITS["context_width"])
    _count("decoder_width", config.decoder_width, 1, LIMITS["decoder_width"])
    estimate = config.parameters()
    if estimate > MAX_PARAMETERS:
        raise ValueError(f"the AL-Net config asks for about {estimate / 1e6:.0f} M parameters (widths "
                         f"{config.stage_widths}, depths {config.stage_depths}); a real AL-Net has at most "
                         f"{MAX_PARAMETERS / 1e6:.0f} M")
