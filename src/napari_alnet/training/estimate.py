"""How long a training run will take, before it starts: steps x seconds per step (measured in this process when a
run with the same crops, batch, frozen stages, precision and device has run, else assumed), plus validation.

``Trainer`` records its median step time at the end of every epoch (``record_step_seconds``); the Fine-tune dock
shows ``estimate(...)`` before a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the loop imports this module; only its type is needed here
    from .loop import TrainConfig

#: Assumed seconds per megapixel of training crops for one optimizer step (forward, backward, Adam) of the shipped
#: architecture in fp32 on 2 threads: measured 2.9-3.0 s/MP at crops of 128 and 256 px, batch 4, AMD EPYC (AVX2),
#: OMP_WAIT_POLICY=ACTIVE (``benchmarks/finetune_loop.py`` prints the seconds per step it measures).
ASSUMED_STEP_SECONDS_PER_MEGAPIXEL = 3.0
#: Assumed seconds per megapixel of one validation or preview prediction (fp32, 2 threads, same CPU).
ASSUMED_EVAL_SECONDS_PER_MEGAPIXEL = 0.8

_measured: dict[tuple, float] = {}


@dataclass(frozen=True)
class Estimate:
    """``steps`` optimizer steps of ``step_seconds`` each (``source``: ``measured`` or ``assumed``) plus
    validation; ``seconds`` in all, capped by the run's time budget (``capped``)."""

    steps: int
    step_seconds: float
    source: str
    seconds: float
    capped: bool

    def describe(self) -> str:
        """'about 1.8 min (300 steps x 0.34 s, measured)' / '... at most 2 min (time budget)'."""
        minutes = self.seconds / 60
        text = f"about {minutes:.1f} min" if minutes >= 1 else f"about {max(1.0, self.seconds):.0f} s"
        if self.capped:
            text = f"{text} (time budget; {self.steps} steps would take longer)"
        return f"{text}: {self.steps} steps x {self.step_seconds:.2f} s ({self.source})"


def _key(config: TrainConfig, device: torch.device | str, precision: str) -> tuple:
    return config.crop, config.batch_size, config.freeze_stages, precision, torch.device(device).type


def record_step_seconds(config: TrainConfig, device: torch.device | str, precision: str, seconds: float) -> None:
    """Remember the measured seconds per step of runs like ``config`` (the latest measurement wins)."""
    if math.isfinite(seconds) and seconds > 0:
        _measured[_key(config, device, precision)] = float(seconds)


def forget_measurements() -> None:
    """Forget every measured step time (estimates are ``assumed`` again until a run measures one)."""
    _measured.clear()


def step_seconds(config: TrainConfig, device: torch.device | str = "cpu", precision: str = "fp32"
                 ) -> tuple[float, str]:
    """(seconds per step, ``measured`` or ``assumed``) for ``config`` on ``device``."""
    measured = _measured.get(_key(config, device, precision))
    if measured is not None:
        return measured, "measured"
    megapixels = config.batch_size * config.crop * config.crop / 1e6
    return ASSUMED_STEP_SECONDS_PER_MEGAPIXEL * megapixels, "assumed"


def estimate(config: TrainConfig, steps: int, *, eval_pixels: int = 0, device: torch.device | str = "cpu",
             precision: str = "fp32") -> Estimate:
    """The run's duration: ``steps`` steps plus ``eval_pixels`` (validation and preview pixels per epoch) predicted
    after each of ``config.epochs`` epochs, capped by ``config.max_minutes``."""
    per_step, source = step_seconds(config, device, precision)
    seconds = steps * per_step + config.epochs * eval_pixels / 1e6 * ASSUMED_EVAL_SECONDS_PER_MEGAPIXEL
    budget = config.max_minutes * 60
    capped = bool(budget) and seconds > budget
    return Estimate(steps, per_step, source, min(seconds, budget) if capped else seconds, capped)
