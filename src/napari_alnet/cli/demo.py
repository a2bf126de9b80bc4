"""``alnet demo``: segment a generated EM-like stack with the shipped model and say how well it did."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from skimage.io import imsave

from ..api import Segmenter, load_model
from ..engine import arguments as checks
from ..engine.batch import segment_files_job
from ..engine.postprocess import instance_labels
from ..io.pretrained import shipped_models
from ..io.sample_data import em_like_stack
from ..io.stack_reader import PixelSize, open_slices
from ..io.stack_writer import TiffStackWriter
from ..model import build_network
from ..training.metrics import segmentation_scores
from .common import drive, progress_bar
from .segment import check_device


def check(args: argparse.Namespace) -> None:
    check_device(args.device)
    checks.output_folder(args.out)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    cells = max(8, round(240 * (args.size / 512) ** 2))
    stack, truth = em_like_stack(depth=args.slices, size=args.size, cells=cells)
    source = _write_demo_stack(out / "em_like_stack.tif", stack)
    model, what = _demo_model(args.device)
    job = segment_files_job([source], out, model, overwrite=True, device=args.device)
    summary = drive(job, progress_bar(args, "demo", "slices"))
    if summary.failures:
        raise ValueError(summary.failures[0][1])
    labels_path = out / "em_like_stack_labels.tif"
    with open_slices(labels_path) as reader:
        labels = np.stack([reader[z] for z in range(len(reader))]).astype(bool)
    mid = len(stack) // 2
    objects = model.metadata.objects
    found = int(instance_labels(labels[mid].astype(np.float32), 0.5, objects).max())
    dice = segmentation_scores(labels, truth).dice
    overlay_path = _write_overlay(out / "em_like_stack_overlay.png", stack[mid], labels[mid])
    seg = summary.seconds
    print(f"segmented a generated EM-like stack {stack.shape} (Z, Y, X) with {what} on {summary.device}: "
          f"{seg:.2f} s ({seg / len(stack) * 1000:.0f} ms/slice), {time.perf_counter() - start:.2f} s in all")
    print(f"membrane pixels {labels.mean():.3f} (truth {truth.mean():.3f}), membrane Dice vs the generated truth "
          f"{dice:.3f}; slice {mid}: {found} {'cells' if objects == 'background' else 'objects'} "
          f"(the stack has {cells})")
    print(f"wrote {source.resolve()}\n      {labels_path.resolve()}  (uint8 labels, 1 = membrane)\n      "
          f"{overlay_path.resolve()}  (slice {mid}, membranes in red)")
    return 0


def _write_demo_stack(path: Path, stack: np.ndarray) -> Path:
    pixel_size = PixelSize(x=0.004, y=0.004, z=0.05, unit="um")
    with TiffStackWriter(path, stack.shape, stack.dtype, pixel_size=pixel_size) as writer:
        for plane in stack:
            writer.write(plane)
        writer.finish()
    return path


def _demo_model(device: str | None) -> tuple[Segmenter, str]:
    """The shipped ``em`` model, or an untrained network where this install ships none, and how to call it."""
    if "em" in shipped_models():
        return load_model("em", device=device), "the shipped 'em' model"
    return Segmenter.from_network(build_network()), "an UNTRAINED AL-Net (no 'em' weights are shipped in this install)"


def _write_overlay(path: Path, plane: np.ndarray, labels: np.ndarray) -> Path:
    """``plane`` in gray with the labelled pixels tinted red, as an RGB PNG."""
    overlay = np.repeat(plane[..., None], 3, axis=-1).astype(np.float32)
    overlay[labels] = 0.5 * overlay[labels] + 0.5 * np.array([255, 40, 40], np.float32)
    imsave(path, overlay.astype(np.uint8), check_contrast=False)
    return path
