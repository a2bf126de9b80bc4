"""The training loop (AL-Net, or a network of another registered family): the paper's recipe by default,
progress/stop via a generator, checkpoints.

``train_job`` / ``train`` are the entry points; a ``Trainer`` holds one run (model, optimizer, schedule, weight
average, crop sampler and its ``TrainState``) and has one method per part of it: a step, an epoch, scoring and
saving the best weights, saving and resuming a checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..engine.devices import autocast_dtype, check_precision, cpu_bf16_support, resolve_device
from ..engine.progress import Job, Progress, StopRequested, run_job
from ..io.atomic import atomic_write
from ..io.weights import load_weights, resolve_weights, save_weights
from ..model.family import build_network
from ..model.metadata import ModelMetadata
from ..model.network import NetworkConfig, SegmentationNetwork, is_network
from .augment import Augmentation
from .data import CropSampler, Pair
from .estimate import StepTime
from .losses import dice_bce_loss
from .metrics import segmentation_scores

#: Training precisions ``TrainConfig.precision`` accepts.
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Training options; the defaults are the paper's recipe (section 4.2) with CPU-sized crops."""

    epochs: int = 150
    lr: float = 5e-3
    gamma: float = 0.95
    batch_size: int = 4
    crop: int = 256
    #: Optimizer steps per epoch; 0 = about one pass over the training pixels.
    steps_per_epoch: int = 0
    seed: int = 0
    #: Wall-clock budget in minutes (0 = none): stops cleanly at the budget, keeping the best weights.
    max_minutes: float = 0.0
    device: str | None = None
    #: Mixed precision where the hardware computes it natively (see ``precision``); False = fp32 everywhere.
    amp: bool = True
    #: ``auto`` (with ``amp``: fp16 autocast on CUDA, bf16 autocast on a CPU with native bf16 — AVX-512-BF16 or
    #: AMX, ``engine.devices.cpu_bf16_support`` —, fp32 elsewhere), or ``fp32`` / ``bf16`` forced. Validation and
    #: the saved weights stay fp32.
    precision: str = "auto"
    threads: int = 0
    threshold: float = 0.5
    #: Exponential moving average of the weights (e.g. 0.999; 0 = off): validated and saved instead of the raw
    #: weights, which keep training.
    ema_decay: float = 0.0
    #: Augmentation beyond flips and translations (see ``training.augment.Augmentation``): a random rotation,
    #: zoom drawn from [1/zoom, zoom], intensity jitter amplitude.
    rotate: bool = False
    zoom: float = 1.0
    intensity_jitter: float = 0.0
    #: Encoder stages (of 5 in AL-Net; ``input_stages()`` of the network, from the input side) whose weights and
    #: BatchNorm statistics stay as they are.
    freeze_stages: int = 0
    #: Fraction of crops centred on a labelled pixel (``Pair.focus``: the corrected / annotated pixels, or the
    #: pixels not ignored); the rest are placed uniformly.
    focus: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"training precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.freeze_stages <= 5:
            raise ValueError(f"freeze_stages must be 0-5 (encoder stages), got {self.freeze_stages}")
        if not 0.0 <= self.focus <= 1.0:
            raise ValueError(f"focus must lie in [0, 1] (a fraction of the crops), got {self.focus}")

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(rotate=self.rotate, zoom=self.zoom, intensity=self.intensity_jitter)

    def resolved_steps(self, pairs: Sequence[Pair]) -> int:
        if self.steps_per_epoch > 0:
            return self.steps_per_epoch
        pixels = sum(p.mask.size for p in pairs)
        return max(1, math.ceil(pixels / (self.crop * self.crop * self.batch_size)))


@dataclass
class TrainResult:
    """What a training run produced: the best weights file and the history of epoch reports."""

    out: Path
    best_epoch: int  # 1-based; 0 = none scored
    best_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_done: int = 0
    steps_done: int = 0
    stopped: str = "finished"  # finished | stopped | budget
    wall_seconds: float = 0.0
    #: The measured seconds per step (median after the first) for the measurer's ``StepTimes``; None: too few steps.
    step_time: StepTime | None = None


@dataclass
class TrainState:
    """Where a run stands; saved (as a plain dict) in every checkpoint and restored on resume."""

    epoch: int = 0  # epochs completed
    steps: int = 0  # optimizer steps done
    best_epoch: int = 0  # 1-based; 0 = none scored
    best_score: float = -math.inf  # validation IoU of the saved weights
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0  # training seconds so far, over all resumed runs


@torch.no_grad()
def evaluate_pairs(model: SegmentationNetwork, pairs: Sequence[Pair], device: torch.device, *, threshold: float = 0.5
                   ) -> dict[str, float]:
    """Mean IoU, accuracy, Dice and loss of ``model`` on whole validation images (ignore masks honoured)."""
    was_training = model.training
    model.eval()
    rows = []
    try:
        for pair in pairs:
            x = torch.from_numpy(pair.image)[None].to(device)
            logits = model(x).float()
            target = torch.from_numpy(pair.mask)[None, None].to(device)
            ignore = None if pair.ignore is None else torch.from_numpy(pair.ignore)[None, None].to(device)
            loss = dice_bce_loss(logits, target, ignore).item()
            prob = torch.sigmoid(logits)[0, 0].cpu().numpy()
            valid = None if pair.ignore is None else ~pair.ignore
            s = segmentation_scores(prob > threshold, pair.mask > 0.5, valid)
            rows.append((s.iou, s.accuracy, s.dice, loss))
    finally:
        model.train(was_training)
    iou, acc, dice, loss = np.mean(rows, axis=0)
    return {"iou": float(iou), "accuracy": float(acc), "dice": float(dice), "loss": float(loss)}


@torch.no_grad()
def tune_threshold(model: SegmentationNetwork, pairs: Sequence[Pair], *,
                   candidates: Sequence[float] = tuple(np.arange(0.2, 0.81, 0.05))) -> tuple[float, float]:
    """The threshold (and its mean IoU) that maximizes the mean foreground IoU on ``pairs``."""
    model.eval()
    probs = [torch.sigmoid(model(torch.from_numpy(p.image)[None]))[0, 0].numpy() for p in pairs]
    scores = [np.mean([segmentation_scores(pr > t, p.mask > 0.5, None if p.ignore is None else ~p.ignore).iou
                       for pr, p in zip(probs, pairs, strict=True)]) for t in candidates]
    best = int(np.argmax(scores))
    return round(float(candidates[best]), 2), float(scores[best])


class Trainer:
    """One training run of ``train_job``: everything is set up by the constructor (seeded), then ``run()``.

    ``step()`` is one optimizer step, ``epoch()`` one epoch (a job), ``score_and_save()`` validates and writes
    the best weights, ``save_checkpoint()`` / ``resume()`` keep and restore the resumable state.
    """

    def __init__(self, train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], metadata: ModelMetadata,
                 out: str | Path, *, config: TrainConfig | None = None,
                 init: str | Path | SegmentationNetwork | None = None, checkpoint: str | Path | None = None) -> None:
        self.config = config = config or TrainConfig()
        if not any(_has_foreground(p) for p in train_pairs):
            raise ValueError(f"all {len(train_pairs)} training masks are empty (no foreground pixel among the "
                             "labelled ones); check the mask convention (--invert-masks) or the annotations")
        self.train_pairs, self.val_pairs, self.metadata = train_pairs, val_pairs, metadata
        self.out = Path(out)
        self.checkpoint = Path(checkpoint) if checkpoint else self.out.with_name(self.out.name + ".ckpt")
        self.device = _prepare_device(config)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model, init_name = _initial_model(init, metadata.config)
        self.model.to(self.device)
        self.frozen = _freeze(self.model, config.freeze_stages)
        self._train_mode()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=config.gamma)
        #: ``fp32``, ``bf16`` or ``fp16``: the autocast of the training steps (``training_precision``).
        self.precision = training_precision(config, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.ema = _weight_average(self.model, config.ema_decay)
        self.sampler = CropSampler(train_pairs, config.crop, self.rng, config.augmentation, focus=config.focus)
        self.steps_per_epoch = config.resolved_steps(train_pairs)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.state = TrainState()
        #: What the model card's ``training`` entry says besides the best epoch and its metrics.
        self.card = {"init": init_name, "recipe": asdict(config), "train_pairs": [p.name for p in train_pairs],
                     "val_pairs": [p.name for p in val_pairs]}
        #: The step losses of the epoch in progress (empty once it is scored).
        self.losses: list[float] = []
        #: Seconds of each optimizer step of this run (the first, which warms up the kernels, included).
        self.step_times: list[float] = []
        self._start = time.perf_counter()

    @property
    def scored_model(self) -> SegmentationNetwork:
        """The network that is validated and saved: the weight average when there is one, else the model."""
        return self.model if self.ema is None else self.ema.module

    def elapsed(self) -> float:
        """Training seconds so far, including those of the run a checkpoint was resumed from."""
        return time.perf_counter() - self._start

    def run(self) -> Job[TrainResult]:
        """Train the remaining epochs; a stop (``StopRequested``, closing, the budget) scores the partial epoch."""
        self._start = time.perf_counter() - self.state.wall
        stopped = "finished"
        try:
            while self.state.epoch < self.config.epochs:
                yield from self.epoch()
        except (_BudgetReached, StopRequested, GeneratorExit) as exc:
            stopped = "budget" if isinstance(exc, _BudgetReached) else "stopped"
            if self.losses:  # score the partial epoch so its progress is not lost
                self.score_and_save(float(np.mean(self.losses)))
            if isinstance(exc, GeneratorExit):
                raise
        self.state.wall = self.elapsed()
        s = self.state
        return TrainResult(out=self.out, best_epoch=s.best_epoch, best_metrics=s.best_metrics, history=s.history,
                           epochs_done=s.epoch, steps_done=s.steps, stopped=stopped, wall_seconds=s.wall,
                           step_time=StepTime.of(self.config, self.device, self.precision, self.seconds_per_step))

    def epoch(self) -> Job[dict[str, Any]]:
        """One epoch: its steps (a ``Progress`` after each), then ``end_epoch``; returns the epoch's history row."""
        cfg, number = self.config, self.state.epoch + 1
        self.losses = []
        for _ in range(self.steps_per_epoch):
            loss = self.step()
            yield Progress(self.state.steps, self.total_steps, self.where(number),
                           {"loss": loss, "epoch": number, "seconds": self.elapsed()})
            if cfg.max_minutes and self.elapsed() > cfg.max_minutes * 60:
                raise _BudgetReached
        row = self.end_epoch()
        yield Progress(self.state.steps, self.total_steps, f"{self.where(number)} done", row)
        return row

    def where(self, epoch: int) -> str:
        """'step 40/300, 35 s (about 50 s left), epoch 3/20': progress in steps and seconds."""
        steps, total, elapsed = self.state.steps, self.total_steps, self.elapsed()
        left = total - steps
        if self.config.max_minutes:
            budget = self.config.max_minutes * 60 - elapsed
            left_s = min(budget, elapsed / max(steps, 1) * left)
        else:
            left_s = elapsed / max(steps, 1) * left
        rest = f" (about {_duration(left_s)} left)" if steps and left else ""
        return f"step {steps}/{total}, {_duration(elapsed)}{rest}, epoch {epoch}/{self.config.epochs}"

    @property
    def seconds_per_step(self) -> float | None:
        """The median seconds of this run's steps after the first (None before the second step)."""
        return float(np.median(self.step_times[1:])) if len(self.step_times) > 1 else None

    def step(self) -> float:
        """One optimizer step on a random batch of crops (and the weight average's update); returns its loss."""
        start = time.perf_counter()
        self._train_mode()
        batch = self.sampler.batch(self.config.batch_size)
        images, masks, ignores = (torch.from_numpy(a).to(self.device) for a in batch)
        dtype = autocast_dtype(self.precision)
        with torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            logits = self.model(images)
        loss = dice_bce_loss(logits.float(), masks[:, None], ignores[:, None])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        value = loss.item()
        self.losses.append(value)
        self.state.steps += 1
        self.step_times.append(time.perf_counter() - start)
        return value

    def _train_mode(self) -> None:
        """Training mode, except the frozen stages (their BatchNorm statistics stay as they were)."""
        self.model.train()
        for module in self.frozen:
            module.eval()

    def end_epoch(self) -> dict[str, Any]:
        """Score and save the epoch, step the learning rate, record the history row and write the checkpoint."""
        train_loss = float(np.mean(self.losses))
        metrics = self.score_and_save(train_loss)
        self.losses = []  # scored: a stop before the next step has no partial epoch to score
        self.scheduler.step()
        self.state.epoch += 1
        self.state.wall = self.elapsed()
        row = {"epoch": self.state.epoch, "train_loss": train_loss, "lr": self.scheduler.get_last_lr()[0],
               "wall_seconds": round(self.state.wall, 1)} | {f"val_{k}": v for k, v in metrics.items()}
        self.state.history.append(row)
        self.save_checkpoint()
        return row

    def score_and_save(self, train_loss: float) -> dict[str, float]:
        """Validate the epoch in progress and write its weights to ``out`` if they are the best by validation IoU;
        without validation pairs the metrics are ``{"loss": train_loss}`` and the latest weights are always kept
        (the training loss of random crops is too noisy to choose an epoch by)."""
        scored, val = self.scored_model, self.val_pairs
        metrics = evaluate_pairs(scored, val, self.device, threshold=self.config.threshold) if val else {
            "loss": train_loss}
        if not val or metrics["iou"] > self.state.best_score:
            epoch = self.state.epoch + 1
            self.state.best_score = metrics.get("iou", -math.inf)
            self.state.best_epoch, self.state.best_metrics = epoch, metrics
            training = self.card | {"best_epoch": epoch, "val_metrics": metrics}
            meta = replace(self.metadata, card=dict(self.metadata.card) | {"training": training})
            save_weights(scored, meta, self.out)
        return metrics

    def save_checkpoint(self) -> None:
        """Write everything ``resume`` needs (weights, optimizer, schedule, average, state, random generators)."""
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "scheduler": self.scheduler.state_dict(), "state": asdict(self.state),
                   "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        if self.ema is not None:
            payload["ema"] = self.ema.state_dict()
        atomic_write(self.checkpoint, lambda tmp: torch.save(payload, tmp))

    def resume(self) -> bool:
        """Continue from ``checkpoint`` if the file exists (True), else start afresh (False)."""
        if not self.checkpoint.is_file():
            return False
        saved = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.ema is not None and "ema" in saved:  # else the average starts from the resumed weights
            self.ema.load_state_dict(saved["ema"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState(**saved["state"])
        self.rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        return True


def train_job(train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], metadata: ModelMetadata, out: str | Path, *,
              config: TrainConfig | None = None, init: str | Path | SegmentationNetwork | None = None,
              checkpoint: str | Path | None = None, resume: bool = False) -> Job[TrainResult]:
    """Train a network of ``metadata.config``'s family (AL-Net by default), yielding a ``Progress`` after every
    step and after every epoch; returns a ``TrainResult``.

    The best weights (by validation IoU; without validation pairs, the latest epoch's: the training loss of random
    crops is too noisy to choose an epoch by) are written to ``out``
    (safetensors, atomically) whenever they improve; ``checkpoint`` (default ``out`` + ``.ckpt``) holds the
    resumable state after each epoch, and ``resume`` continues from it when it exists. Throwing ``StopRequested``
    in (``run_job``'s stop) or closing the generator ends the run within one step with the best weights saved.
    Nothing runs (not even the checks) before the first ``next()``.
    """
    trainer = Trainer(train_pairs, val_pairs, metadata, out, config=config, init=init, checkpoint=checkpoint)
    if resume:
        trainer.resume()
    return (yield from trainer.run())


def train(train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], metadata: ModelMetadata, out: str | Path, *,
          config: TrainConfig | None = None, init: str | Path | SegmentationNetwork | None = None,
          checkpoint: str | Path | None = None, resume: bool = False,
          on_progress: Callable[[Progress], bool | None] | None = None) -> TrainResult:
    """``train_job`` run to completion (``on_progress`` may return True to stop early)."""
    job = train_job(train_pairs, val_pairs, metadata, out, config=config, init=init, checkpoint=checkpoint,
                    resume=resume)
    return run_job(job, on_progress)


def _prepare_device(config: TrainConfig) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels once
    if config.threads:
        torch.set_num_threads(config.threads)
    return device


def training_precision(config: TrainConfig, device: torch.device) -> str:
    """The autocast of the training steps: ``config.precision`` when forced (``ValueError`` if ``device`` cannot run
    it); for ``auto`` with ``amp``: fp16 on CUDA, bf16 on a CPU that computes it natively (emulated bf16 is several
    times slower than fp32), fp32 elsewhere."""
    if config.precision != "auto":
        check_precision(config.precision, device)
        return config.precision
    if not config.amp:
        return "fp32"
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_bf16_support().native:
        return "bf16"
    return "fp32"


def _freeze(model: SegmentationNetwork, stages: int) -> list[torch.nn.Module]:
    """Freeze the first ``stages`` of the network's ``input_stages()`` (no gradients); returns them (kept in eval
    mode by the Trainer)."""
    available = list(model.input_stages())
    if stages > len(available):
        raise ValueError(f"freeze_stages is {stages}, but this network has {len(available)} stage(s) to freeze")
    frozen = available[:stages]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _initial_model(init: str | Path | SegmentationNetwork | None, config: NetworkConfig
                   ) -> tuple[SegmentationNetwork, str]:
    if init is None:
        return build_network(config), "scratch"
    if is_network(init):
        if init.is_reparameterized:
            raise ValueError("cannot fine-tune a re-parameterized model; start from its weight file")
        return init, "model"
    model, meta = load_weights(resolve_weights(init))
    if model.is_reparameterized:
        raise ValueError(f"{init}: holds fused (inference-only) weights; fine-tuning needs training-form weights")
    if meta.config.in_channels != config.in_channels:
        raise ValueError(f"{init}: a {meta.config.in_channels}-channel model cannot start a "
                         f"{config.in_channels}-channel training")
    return model, str(init)


def _has_foreground(pair: Pair) -> bool:
    fg = pair.mask > 0.5
    return bool(fg.any() if pair.ignore is None else fg[~pair.ignore].any())


class _BudgetReached(Exception):
    pass


def _weight_average(model: SegmentationNetwork, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BN statistics, or None when ``decay`` is 0."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1) (or be 0 for none), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
