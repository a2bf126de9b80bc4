"""How much a volume block's probabilities change with torch threads, planes per forward and precision.

    python benchmarks/volume_numerics.py [--shape 4 160 144] [--threads 1 2]

Runs ``segment_volume`` in-process on a smooth random texture with the calibrated test model of
``tests/model_factory.py`` (no shipped weights needed), float32 probabilities, for every (precision, threads,
planes per block) and prints the largest probability difference against fp32 / first thread count / 1 plane, and
how many voxels differ at all. docs/volumes.md ("Identical on every CPU") quotes it; name the CPU beside the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import cpu_name
from model_factory import calibrated_model, texture
from napari_alnet.engine.volume import segment_volume


def probabilities(model, data: np.ndarray, dest: Path, threads: int, planes: int) -> np.ndarray:
    segment_volume(model, data, dest, block=(planes, *data.shape[1:]), threads=threads, probabilities=True,
                   prob_dtype="float32")
    return zarr.open_array(dest.with_name(dest.stem + "_prob.zarr") / "0")[:]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(4, 160, 144))
    parser.add_argument("--threads", type=int, nargs="+", default=(1, 2))
    args = parser.parse_args()
    data = (texture(tuple(args.shape), seed=5) * 255).astype(np.uint8)
    model = calibrated_model()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            for threads in args.threads:
                for planes in (1, args.shape[0]):
                    dest = Path(tmp) / f"{precision}-{threads}-{planes}.zarr"
                    out[precision, threads, planes] = probabilities(model.with_precision(precision), data, dest,
                                                                    threads, planes)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, ATen "
          f"{torch.backends.cpu.get_cpu_capability()}; volume {tuple(args.shape)}")
    for (precision, threads, planes), probs in out.items():
        ref = out[precision, args.threads[0], 1]
        diff = np.abs(probs - ref)
        print(f"{precision} threads={threads} planes/forward={planes}: max |dp| {diff.max():.3g} vs threads="
              f"{args.threads[0]} planes=1, {int((diff > 0).sum())} voxels differ")
    gap = np.abs(out["bf16", args.threads[0], 1] - out["fp32", args.threads[0], 1])
    print(f"bf16 vs fp32: max |dp| {gap.max():.3g}")


if __name__ == "__main__":
    main()
