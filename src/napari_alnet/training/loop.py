"""The AL-Net training loop: the paper's recipe by default, progress/stop via a generator, checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..engine.devices import resolve_device
from ..engine.progress import Job, Progress, StopRequested, run_job
from ..io.atomic import atomic_write
from ..io.weights import load_weights, resolve_weights, save_weights
from ..model import ALNet, ALNetConfig
from ..model.metadata import ModelMetadata
from .augment import Augmentation
from .data import CropSampler, Pair
from .losses import dice_bce_loss
from .metrics import segmentation_scores


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
    #: Mixed precision (used on CUDA only).
    amp: bool = True
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


@torch.no_grad()
def evaluate_pairs(model: ALNet, pairs: Sequence[Pair], device: torch.device, threshold: float = 0.5
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
def tune_threshold(model: ALNet, pairs: Sequence[Pair], candidates: Sequence[float] = tuple(np.arange(0.2, 0.81, 0.05))
                   ) -> tuple[float, float]:
    """The threshold (and its mean IoU) that maximizes the mean foreground IoU on ``pairs``."""
    model.eval()
    probs = [torch.sigmoid(model(torch.from_numpy(p.image)[None]))[0, 0].numpy() for p in pairs]
    scores = [np.mean([segmentation_scores(pr > t, p.mask > 0.5, None if p.ignore is None else ~p.ignore).iou
                       for pr, p in zip(probs, pairs, strict=True)]) for t in candidates]
    best = int(np.argmax(scores))
    return round(float(candidates[best]), 2), float(scores[best])


def _initial_model(init: str | Path | ALNet | None, config: ALNetConfig) -> tuple[ALNet, str]:
    if init is None:
        return ALNet(config), "scratch"
    if isinstance(init, ALNet):
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


def train_job(train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], metadata: ModelMetadata, out: str | Path,
              config: TrainConfig | None = None, init: str | Path | ALNet | None = None,
              checkpoint: str | Path | None = None, resume: bool = False) -> Job[TrainResult]:
    """Train AL-Net, yielding a ``Progress`` after every step; returns a ``TrainResult``.

    The best weights (by validation IoU; without validation pairs, the latest epoch's: the training loss of random
    crops is too noisy to choose an epoch by) are written to ``out``
    (safetensors, atomically) whenever they improve; ``checkpoint`` (default ``out`` + ``.ckpt``) holds the
    resumable state after each epoch. Throwing ``StopRequested`` in (``run_job``'s stop) or closing the
    generator ends the run within one step with the best weights saved.
    """
    config = config or TrainConfig()
    if not any(_has_foreground(p) for p in train_pairs):
        raise ValueError(f"all {len(train_pairs)} training masks are empty (no foreground pixel among the labelled "
                         "ones); check the mask convention (--invert-masks) or the annotations")
    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint else out.with_name(out.name + ".ckpt")
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels once
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, init_name = _initial_model(init, metadata.config)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = _weight_average(model, config.ema_decay)
    sampler = CropSampler(train_pairs, config.crop, rng, config.augmentation)
    steps = config.resolved_steps(train_pairs)
    total = steps * config.epochs
    state = {"epoch": 0, "steps": 0, "best_epoch": 0, "best_score": -math.inf, "best_metrics": {}, "history": [],
             "wall": 0.0}
    if resume and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if ema is not None and "ema" in saved:  # else the average starts from the resumed weights
            ema.load_state_dict(saved["ema"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
    card_base = {"init": init_name, "recipe": asdict(config), "train_pairs": [p.name for p in train_pairs],
                 "val_pairs": [p.name for p in val_pairs]}
    start = time.perf_counter() - state["wall"]
    stopped = "finished"

    def score_and_save(epoch_loss: float) -> dict[str, float]:
        scored = model if ema is None else ema.module
        metrics = evaluate_pairs(scored, val_pairs, device, config.threshold) if val_pairs else {"loss": epoch_loss}
        if not val_pairs or metrics["iou"] > state["best_score"]:  # without validation: always the latest
            state.update(best_score=metrics.get("iou", -math.inf), best_epoch=state["epoch"] + 1,
                         best_metrics=metrics)
            card = dict(metadata.card) | {"training": card_base | {"best_epoch": state["epoch"] + 1,
                                                                    "val_metrics": metrics}}
            meta = replace(metadata, card=card)
            save_weights(scored, meta, out)
        return metrics

    losses: list[float] = []
    try:
        while state["epoch"] < config.epochs:
            losses = []
            for _ in range(steps):
                images, masks, ignores = (torch.from_numpy(a).to(device) for a in sampler.batch(config.batch_size))
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = model(images)
                loss = dice_bce_loss(logits.float(), masks[:, None], ignores[:, None])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                losses.append(loss.item())
                state["steps"] += 1
                yield Progress(state["steps"], total, f"epoch {state['epoch'] + 1}/{config.epochs}",
                               {"loss": loss.item(), "epoch": state["epoch"] + 1})
                if config.max_minutes and time.perf_counter() - start > config.max_minutes * 60:
                    raise _BudgetReached
            metrics = score_and_save(float(np.mean(losses)))
            scheduler.step()
            state["epoch"] += 1
            state["wall"] = time.perf_counter() - start
            row = {"epoch": state["epoch"], "train_loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0],
                   "wall_seconds": round(state["wall"], 1)} | {f"val_{k}": v for k, v in metrics.items()}
            state["history"].append(row)
            _save_checkpoint(checkpoint, model, optimizer, scheduler, state, rng, ema)
            yield Progress(state["steps"], total, f"epoch {state['epoch']}/{config.epochs} done", row)
    except (_BudgetReached, StopRequested, GeneratorExit) as exc:
        stopped = "budget" if isinstance(exc, _BudgetReached) else "stopped"
        if losses:  # score the partial epoch so its progress is not lost
            score_and_save(float(np.mean(losses)))
        if isinstance(exc, GeneratorExit):
            raise
    state["wall"] = time.perf_counter() - start
    return TrainResult(out=out, best_epoch=state["best_epoch"], best_metrics=state["best_metrics"],
                       history=state["history"], epochs_done=state["epoch"], steps_done=state["steps"],
                       stopped=stopped, wall_seconds=state["wall"])


def _has_foreground(pair: Pair) -> bool:
    fg = pair.mask > 0.5
    return bool(fg.any() if pair.ignore is None else fg[~pair.ignore].any())


class _BudgetReached(Exception):
    pass


def _weight_average(model: ALNet, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BN statistics, or None when ``decay`` is 0."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1) (or be 0 for none), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _save_checkpoint(path: Path, model: ALNet, optimizer, scheduler, state: dict, rng: np.random.Generator,
                     ema: AveragedModel | None) -> None:
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "state": state, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
    if ema is not None:
        payload["ema"] = ema.state_dict()
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def train(*args, on_progress=None, **kwargs) -> TrainResult:
    """``train_job`` run to completion (``on_progress`` may return True to stop early)."""
    return run_job(train_job(*args, **kwargs), on_progress)
