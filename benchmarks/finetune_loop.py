"""The correction loop's fine-tune presets: held-out IoU against wall time, Quick against Thorough (issue 23 item 3).

    python benchmarks/finetune_loop.py [--cases generated isbi] [--presets quick thorough] [--threads 2] [--no-budget]

From ``em``, dense annotations of 3 slices; after every epoch the weights are copied aside, and scored on the
held-out slices after the run (so that scoring does not count against the run's time or its budget):
- ``generated``: an EM-like stack from ``io.sample_data.em_like_stack`` (8 x 512², seed 3; ``em`` was never trained
  on it), trained on slices 0-2, scored on 3-7;
- ``isbi``: ISBI 2012 train slices 3, 10, 17 (the project's train split 00-20), scored on the test slices 21-29
  (membrane IoU; needs ../shared/data).
Prints per epoch: wall seconds, steps, held-out IoU; then per run: the IoU of ``em`` itself, the first preview's
time and IoU (the preview slice is the first held-out slice), the best IoU and when it was reached, and the median
seconds per step. Figures are as noisy as the machine is busy: compare presets measured in one run. On a machine
busy with other work, ``--no-budget`` runs Quick's steps without its 2-minute budget, so that its accuracy can be
compared step for step and its time worked out from the seconds per step of a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_alnet import load_model, predict
from napari_alnet.engine.progress import Progress, run_job
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.stack_reader import read_image
from napari_alnet.training.finetune import PRESETS, FinetuneRequest, finetune_job, finetune_recipe
from napari_alnet.training.metrics import segmentation_scores

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train"
ISBI_TRAIN, ISBI_TEST = (3, 10, 17), tuple(range(21, 30))


@dataclass
class Run:
    """What one fine-tune run reported: (wall s, steps, weights copy) per epoch, the first preview, step times."""

    epochs: list[tuple[float, int, Path]] = field(default_factory=list)
    preview: tuple[float, np.ndarray] | None = None
    step_seconds: list[float] = field(default_factory=list)


def mean_iou(weights, images, truths) -> float:
    model = load_model(weights, device="cpu")
    return float(np.mean([segmentation_scores(predict(model, im) > model.metadata.threshold, t).iou
                          for im, t in zip(images, truths, strict=True)]))


def fine_tune(images, labels, train, preset: str, folder: Path, preview: int, budget: bool = True) -> Run:
    out = folder / f"{preset}.safetensors"
    recipe = finetune_recipe(preset) if budget else finetune_recipe(preset, max_minutes=0.0)
    request = FinetuneRequest(images, labels, slices=list(train), base="em", out=out, preview_slice=preview,
                              train=recipe, image_name="stack")
    run, start, last = Run(), time.perf_counter(), [None]

    def watch(report: Progress) -> None:
        seconds = report.metrics.get("seconds")
        if seconds is not None and last[0] is not None:
            run.step_seconds.append(seconds - last[0])
        last[0] = seconds
        if report.message.endswith("done"):
            copy = folder / f"{preset}-{len(run.epochs) + 1}.safetensors"
            shutil.copyfile(out, copy)
            run.epochs.append((report.metrics["wall_seconds"], report.step, copy))
            last[0] = None  # the epoch's validation and preview are not a step
        if run.preview is None and "preview" in report.metrics:
            run.preview = (time.perf_counter() - start, report.metrics["preview"])

    result = run_job(finetune_job(request), watch)
    if result.stopped == "budget" and result.best_epoch > len(run.epochs):  # the budget's partial epoch was best
        copy = folder / f"{preset}-last.safetensors"
        shutil.copyfile(out, copy)
        run.epochs.append((result.wall_seconds, result.steps_done, copy))
    return run


def report(name: str, images, truths, train, test, presets, budget: bool = True) -> None:
    labels = np.zeros(images.shape, np.uint8)
    for z in train:
        labels[z] = truths[z]
    held_images, held_truths = images[list(test)], truths[list(test)]
    base = mean_iou("em", held_images, held_truths)
    base_preview = segmentation_scores(predict(load_model("em", device="cpu"), images[test[0]]) > 0.5,
                                       truths[test[0]]).iou
    print(f"\n## {name}: train slices {list(train)}, held out {list(test)}; em itself: held-out IoU {base:.4f}, "
          f"IoU {base_preview:.4f} on the preview slice {test[0]}")
    summary = []
    for preset in presets:
        with tempfile.TemporaryDirectory() as tmp:
            run = fine_tune(images, labels, train, preset, Path(tmp), test[0], budget)
            print(f"\n{preset}: {PRESETS[preset]}\n| wall s | steps | held-out IoU |\n| ---: | ---: | ---: |")
            scores = []
            for wall, steps, weights in run.epochs:
                scores.append((mean_iou(weights, held_images, held_truths), wall, steps))
                print(f"| {wall:.1f} | {steps} | {scores[-1][0]:.4f} |", flush=True)
        best = max(scores)
        seconds, preview = run.preview if run.preview else (float("nan"), None)
        preview_iou = segmentation_scores(preview > 0.5, truths[test[0]]).iou if preview is not None else np.nan
        summary.append((preset, best, seconds, preview_iou, float(np.median(run.step_seconds))))
    print(f"\n| {name} | best held-out IoU | reached at (s) | steps | first preview at (s) | its IoU | s/step |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for preset, (iou, wall, steps), seconds, preview_iou, per_step in summary:
        print(f"| {preset} | {iou:.4f} | {wall:.1f} | {steps} | {seconds:.1f} | {preview_iou:.4f} | {per_step:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["generated", "isbi"], choices=["generated", "isbi"])
    parser.add_argument("--presets", nargs="+", default=["quick", "thorough"], choices=list(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-budget", action="store_true", help="run every step of each preset (no time budget)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}, ONEDNN_MAX_CPU_ISA="
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '(native)')}")
    if "generated" in args.cases:
        images, truths = em_like_stack(depth=8, size=512, cells=120, seed=3)
        report("generated EM-like stack", images, truths, (0, 1, 2), tuple(range(3, 8)), args.presets,
               not args.no_budget)
    if "isbi" in args.cases:
        if not ISBI.is_dir():
            print(f"\nISBI data not found at {ISBI}: skipping")
            return
        images = np.stack([read_image(ISBI / "images" / f"{i:02d}.png") for i in range(30)])
        membranes = np.stack([read_image(ISBI / "labels" / f"{i:02d}.png") == 0 for i in range(30)])
        report("ISBI 2012 membranes", images, membranes, ISBI_TRAIN, ISBI_TEST, args.presets, not args.no_budget)


if __name__ == "__main__":
    main()
