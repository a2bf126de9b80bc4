"""Held-out IoU of the fine-tune test's recipe (``tests/test_finetune.py::test_finetune_improves_iou``), per
annotation mode and seed, so its threshold can be checked on this CPU and under other oneDNN ISAs:

    python benchmarks/finetune_test_recipe.py [--seeds 0 1 2]
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/finetune_test_recipe.py      # or SSE41, AVX512_CORE, ...

Five annotated slices of a generated EM-like stack (128², seed 5), an untrained base, 8 epochs x 8 steps, crop 96,
lr 5e-3; IoU of the fine-tuned model on the sixth, unseen slice (the test asserts > 0.8).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from napari_alnet.engine.progress import run_job
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import save_weights
from napari_alnet.model import ALNet
from napari_alnet.model.metadata import ModelMetadata
from napari_alnet.training.finetune import FinetuneRequest, finetune_job, finetune_recipe
from test_finetune import iou_of, scribbles_from


def held_out_iou(mode: str, seed: int, folder: Path) -> float:
    """Fine-tune an untrained base as the test does (training seed ``seed``); IoU on the unseen slice."""
    images, truth = em_like_stack(depth=6, size=128, cells=20, seed=5)
    torch.manual_seed(seed)
    base = save_weights(ALNet(), ModelMetadata(), folder / f"base-{mode}-{seed}.safetensors")
    labels = np.zeros(images.shape, np.uint8)
    rng = np.random.default_rng(0)
    for z in range(5):
        labels[z] = truth[z].astype(np.uint8) if mode == "dense" else scribbles_from(truth[z], rng)
    out = folder / f"{mode}-{seed}.safetensors"
    recipe = finetune_recipe(epochs=8, lr=5e-3, crop=96, steps_per_epoch=8, seed=seed)
    run_job(finetune_job(FinetuneRequest(images, labels, mode=mode, base=base, out=out, train=recipe,
                                         image_name="em")))
    return iou_of(out, images[5], truth[5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print(f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(native)')}, torch {torch.__version__}")
    print("| mode | seed | held-out IoU |\n| --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("dense", "scribbles"):
            for seed in args.seeds:
                print(f"| {mode} | {seed} | {held_out_iou(mode, seed, Path(tmp)):.4f} |", flush=True)


if __name__ == "__main__":
    main()
