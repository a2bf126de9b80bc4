"""``alnet train``: train AL-Net (the paper's recipe by default, or fine-tune with ``--init``) into a weight file."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..engine import arguments as checks
from ..io.images import pair_files, select_split
from ..io.weights import load_weights, save_weights
from ..model import ALNetConfig
from ..model.metadata import ModelMetadata, Normalization
from ..training import Pair, TrainConfig, TrainResult, load_pairs, train_job
from ..training.data import raw_pairs
from ..training.loop import tune_threshold
from ..training.precision_check import GuardSet, check_finetuned, files_guard
from .common import drive, interrupted_exit_code, progress_bar
from .segment import check_device


def check(args: argparse.Namespace) -> None:
    """The flag checks that need the engine (the device); ``--crop`` against the images is checked once they are
    read (``run``)."""
    check_device(args.device)
    checks.crop(args.crop, ())


def run(args: argparse.Namespace) -> int:
    norm = Normalization(kind=args.normalization)
    config = _network_config(args)
    pairs, val, guard = _training_pairs(args, norm)
    checks.crop(args.crop, [p.mask.shape for p in [*pairs, *val]])
    meta = _new_metadata(args, config, norm)
    recipe = _recipe(args)
    print(f"training on {len(pairs)} pairs, validating on {len(val)}; "
          f"{recipe.resolved_steps(pairs)} steps/epoch x {recipe.epochs} epochs", file=sys.stderr)
    started = time.time()
    job = train_job(pairs, val, meta, out=args.out, config=recipe, init=args.init, checkpoint=args.checkpoint,
                    resume=args.resume)
    try:
        result = drive(job, progress_bar(args, "train", "steps"))
    except KeyboardInterrupt as exc:
        out = Path(args.out)
        saved = out.is_file() and out.stat().st_mtime >= started
        print("interrupted; " + (f"the best weights so far are in {out}" if saved else
                                 f"no weights were saved yet (nothing was written to {out})"), file=sys.stderr)
        return interrupted_exit_code(exc)
    _finish_weights(args, result, val, guard)
    if result.stopped == "budget":
        total = recipe.resolved_steps(pairs) * recipe.epochs
        print(f"stopped at the --max-minutes budget after {result.steps_done} of {total} steps "
              f"({result.epochs_done} of {recipe.epochs} epochs): the run did not finish", file=sys.stderr)
    print(f"best epoch {result.best_epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
          + f"; {result.wall_seconds / 60:.1f} min; wrote {result.out}")
    return 0


def _network_config(args: argparse.Namespace) -> ALNetConfig:
    """The network to train: ``--config-json`` (with ``--channels``) or the shipped architecture."""
    config = (ALNetConfig.from_json(args.config_json).replace(in_channels=args.channels) if args.config_json
              else ALNetConfig(in_channels=args.channels))
    if args.init and args.config_json:
        raise ValueError("--config-json describes a new network; --init takes the network of its weight file")
    return config


def _check_train_outputs(args: argparse.Namespace, inputs: Sequence[tuple[Path, Path]]) -> None:
    """``--out`` (and its checkpoint) must be a new ``.safetensors`` path that is none of the inputs; an existing
    one is replaced only with ``--overwrite`` (or continued with ``--resume``)."""
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: weight files are written as .safetensors; give a path ending in .safetensors")
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    used = {p.resolve() for pair in inputs for p in pair}
    for path in (out, checkpoint):
        if path.resolve() in used:
            raise ValueError(f"{path}: is one of the training or validation inputs; refusing to write over it")
        if path.is_dir():
            raise ValueError(f"{path}: is a folder; give a file path")
    if not (args.overwrite or args.resume):
        for path in (out, checkpoint):
            if path.exists():
                raise ValueError(f"{path}: exists; use --overwrite to replace it (or --resume to continue its run)")


def _training_pairs(args: argparse.Namespace, norm: Normalization) -> tuple[list[Pair], list[Pair], GuardFiles]:
    """Training and validation pairs: ``--val-images``, else the last ``--holdout`` training pairs, else none; and
    the files the saved model's bf16 check reads (``GuardFiles``)."""
    files = pair_files(args.images, args.masks)
    val_files = pair_files(args.val_images, args.val_masks or args.masks) if args.val_images else []
    if args.resize and args.scale != 1:
        raise ValueError("give --resize or --scale, not both")
    _check_train_outputs(args, [*files, *val_files])
    if args.split_csv:
        files = select_split(files, args.split_csv, args.subset)
    pairs = _load_pairs(files, args, norm)
    if args.val_images:
        val, guard = _load_pairs(val_files, args, norm), GuardFiles(val_files, "validation images (--val-images)")
    elif args.holdout:
        pairs, val = pairs[: -args.holdout], pairs[-args.holdout:]
        guard = GuardFiles(files, f"the {args.holdout} held-out training image(s) (--holdout)", last=args.holdout)
    else:
        val, guard = [], GuardFiles(files, "no validation images: training images (trained on)", trained=True)
    if not pairs:
        raise ValueError("no training pairs left after holding out validation pairs")
    return pairs, val, guard


@dataclass(frozen=True)
class GuardFiles:
    """The image/mask files the saved model's bf16 check runs on: all of them, or the ``last`` images (the
    held-out ones); ``trained``: they are training images."""

    files: Sequence[tuple[Path, Path]]
    split: str
    last: int | None = None
    trained: bool = False

    def guard(self, invert: bool) -> GuardSet:
        found = raw_pairs(self.files, invert=invert)
        found = found[-self.last:] if self.last else found
        return files_guard(found, split=self.split, on_training_slices=self.trained)


def _load_pairs(files: Sequence[tuple[Path, Path]], args: argparse.Namespace, norm: Normalization) -> list[Pair]:
    return load_pairs(files, normalization=norm, in_channels=args.channels, invert=args.invert_masks,
                      resize=args.resize, scale=args.scale)


def _new_metadata(args: argparse.Namespace, config: ALNetConfig, norm: Normalization) -> ModelMetadata:
    return ModelMetadata(config=config, modality=args.modality, normalization=norm, threshold=0.5,
                         objects=args.objects, card={"summary": args.summary} if args.summary else {},
                         input_size=(args.resize, args.resize) if args.resize else None, input_scale=args.scale)


def _recipe(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, lr=args.lr, gamma=args.gamma, batch_size=args.batch_size,
                       crop=args.crop, steps_per_epoch=args.steps_per_epoch, seed=args.seed,
                       max_minutes=args.max_minutes, device=args.device, threads=args.threads,
                       ema_decay=args.ema, rotate=args.rotate, zoom=args.zoom,
                       intensity_jitter=args.intensity_jitter)


def _finish_weights(args: argparse.Namespace, result: TrainResult, val: list[Pair], guard: GuardFiles) -> None:
    """Rewrite the best weights with the tuned threshold (``--tune-threshold``), the training record and the bf16
    check (``precision_check.check_finetuned``) in the model card, and in float16 with ``--half``."""
    model, saved = load_weights(result.out)
    if args.tune_threshold and val:
        saved.threshold, tuned = tune_threshold(model, val)
        print(f"threshold tuned on the validation pairs: {saved.threshold:.2f} (IoU {tuned:.4f})", file=sys.stderr)
    checked = check_finetuned(model, saved, guard.guard(args.invert_masks))
    card = dict(saved.card) | checked
    print(f"bf16 {'validated' if checked['bf16'].get('validated') else 'not validated'} on {guard.split}",
          file=sys.stderr)
    card["training"] = dict(card.get("training", {})) | {
        "command": "alnet " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("alnet") else None,
        "wall_seconds": round(result.wall_seconds, 1), "epochs_done": result.epochs_done,
        "steps_done": result.steps_done, "stopped": result.stopped, "history": result.history}
    saved.card = card
    save_weights(model, saved, result.out, half=args.half)
