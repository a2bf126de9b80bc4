"""Fine-tuning speed: held-out IoU against wall time on this CPU.

    python benchmarks/finetune.py [--minutes 5] [--base em] [--threads 2]

Runs (1) dense and (2) scribble fine-tunes of the base model on 3 ISBI 2012 slices from 00-20, scoring the
membrane IoU on slices 21-29 after every epoch, and (3) a dense fine-tune on a new target (dark organelles in
a generated EM-like stack, scored on held-out generated slices). Needs ../shared/data for (1) and (2).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_alnet import load_model, predict
from napari_alnet.engine.progress import Progress, run_job
from napari_alnet.io.sample_data import organelle_stack
from napari_alnet.io.stack_reader import read_image
from napari_alnet.training.finetune import FinetuneRequest, finetune_job, finetune_recipe
from napari_alnet.training.metrics import segmentation_scores

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train"
TRAIN_SLICES = (3, 10, 17)


def scribbles(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sparse strokes from a ground truth: bits of the foreground skeleton (1) and of deep background (2)."""
    from skimage.morphology import skeletonize

    blocks = rng.random((truth.shape[0] // 32 + 1, truth.shape[1] // 32 + 1)) < 0.3
    keep = np.kron(blocks, np.ones((32, 32), bool))[: truth.shape[0], : truth.shape[1]]
    fg = skeletonize(truth) & keep
    bg = (ndi.distance_transform_edt(~truth) > 8) & keep & (rng.random(truth.shape) < 0.05)
    bg = ndi.binary_dilation(bg, iterations=2) & ~truth
    return np.where(fg, 1, np.where(bg, 2, 0)).astype(np.uint8)


def mean_iou(weights, images, truths) -> float:
    model = load_model(weights, device="cpu")
    return float(np.mean([segmentation_scores(predict(model, im) > model.metadata.threshold, t).iou
                          for im, t in zip(images, truths, strict=True)]))


def run(name: str, request: FinetuneRequest, test_images, test_truths, base) -> None:
    start = time.perf_counter()
    print(f"\n{name}: {len(request.slices or [])} slices, mode {request.mode}, base {base}")
    print(f"{'wall s':>8} {'epoch':>6} {'held-out IoU':>13}")
    print(f"{0.0:>8.1f} {'base':>6} {mean_iou(base, test_images, test_truths):>13.4f}" if base else "")

    def score(report: Progress) -> None:
        nonlocal start
        if report.message.endswith("done"):
            elapsed = time.perf_counter() - start
            iou = mean_iou(request.out, test_images, test_truths)
            print(f"{elapsed:>8.1f} {report.metrics['epoch']:>6} {iou:>13.4f}", flush=True)
            start += time.perf_counter() - start - elapsed  # scoring time is not training time

    run_job(finetune_job(request), score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="wall budget per run")
    parser.add_argument("--base", default="em")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp())
    recipe = finetune_recipe(epochs=args.epochs, lr=1e-3, crop=256, batch_size=4, steps_per_epoch=20,
                             max_minutes=args.minutes)
    common = dict(base=args.base, train=recipe)
    if ISBI.is_dir():
        images = np.stack([read_image(ISBI / "images" / f"{i:02d}.png") for i in range(30)])
        membranes = np.stack([read_image(ISBI / "labels" / f"{i:02d}.png") == 0 for i in range(30)])
        test = list(range(21, 30))
        dense = np.zeros(images.shape, np.uint8)
        sparse = np.zeros(images.shape, np.uint8)
        for z in TRAIN_SLICES:
            dense[z] = membranes[z]
            sparse[z] = scribbles(membranes[z], rng)
        print(f"scribbles label {100 * (sparse[list(TRAIN_SLICES)] > 0).mean():.1f} % of the pixels of their slices")
        for mode, labels in (("dense", dense), ("scribbles", sparse)):
            req = FinetuneRequest(images, labels, mode=mode, slices=list(TRAIN_SLICES), out=tmp / f"{mode}.st",
                                  image_name="isbi", **common)
            run(f"ISBI 2012 membranes, {mode}", req, images[test], membranes[test], args.base)
    else:
        print(f"ISBI data not found at {ISBI}: skipping the ISBI runs")
    images, organelles = organelle_stack(depth=8, size=512, count=40, seed=1)
    labels = np.zeros(images.shape, np.uint8)
    for z in (0, 1, 2):
        labels[z] = organelles[z]
    req = FinetuneRequest(images, labels, mode="dense", slices=[0, 1, 2], out=tmp / "new.st", image_name="organelles",
                          **common)
    run("new target: generated organelles", req, images[3:], organelles[3:], args.base)


if __name__ == "__main__":
    main()
