"""How long a training run will take, before it starts: steps x seconds per step (measured in this process when a
run with the same crops, batch, frozen stages, precision and device has run, else assumed), plus validation.

A run's ``TrainResult.step_time`` is its measured ``StepTime``; whoever measures keeps them in its own ``StepTimes``
(the Fine-tune dock holds one, records each run's and shows ``estimate(..., times=...)`` before the next run).
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


@dataclass(frozen=True)
class StepTime:
    """One run's measured ``seconds`` per optimizer step and what decides it (``key``: crop, batch, frozen stages,
    precision, device type)."""

    key: tuple
    seconds: float

    @classmethod
    def of(cls, config: TrainConfig, device: torch.device | str, precision: str, seconds: float | None
           ) -> StepTime | None:
        """The measurement of a run like ``config`` (None when ``seconds`` is not a usable time)."""
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            return None
        return cls(_key(config, device, precision), float(seconds))


class StepTimes:
    """The step times one owner (a dock, a benchmark) measured; estimates of runs like a measured one use it."""

    def __init__(self) -> None:
        self._seconds: dict[tuple, float] = {}

    def record(self, measured: StepTime | None) -> None:
        """Remember a run's step time (the latest for the same kind of run wins; None is ignored)."""
        if measured is not None:
            self._seconds[measured.key] = measured.seconds

    def forget(self) -> None:
        """Forget every measured step time (estimates are ``assumed`` again until a run measures one)."""
        self._seconds.clear()

    def get(self, config: TrainConfig, device: torch.device | str, precision: str) -> float | None:
        """The measured seconds per step of runs like ``config`` (None if none ran)."""
        return self._seconds.get(_key(config, device, precision))


def step_seconds(config: TrainConfig, device: torch.device | str = "cpu", precision: str = "fp32", *,
                 times: StepTimes | None = None) -> tuple[float, str]:
    """(seconds per step, ``measured`` (in ``times``) or ``assumed``) for ``config`` on ``device``."""
    measured = None if times is None else times.get(config, device, precision)
    if measured is not None:
        return measured, "measured"
    megapixels = config.batch_size * config.crop * config.crop / 1e6
    return ASSUMED_STEP_SECONDS_PER_MEGAPIXEL * megapixels, "assumed"


def estimate(config: TrainConfig, steps: int, *, eval_pixels: int = 0, device: torch.device | str = "cpu",
             precision: str = "fp32", times: StepTimes | None = None) -> Estimate:
    """The run's duration: ``steps`` steps (measured in ``times`` when a run like it was, else assumed) plus
    ``eval_pixels`` (validation and preview pixels per epoch) predicted after each of ``config.epochs`` epochs,
    capped by ``config.max_minutes``."""
    per_step, source = step_seconds(config, device, precision, times=times)
    seconds = steps * per_step + config.epochs * eval_pixels / 1e6 * ASSUMED_EVAL_SECONDS_PER_MEGAPIXEL
    budget = config.max_minutes * 60
    capped = bool(budget) and seconds > budget
    return Estimate(steps, per_step, source, min(seconds, budget) if capped else seconds, capped)
