"""What keeping corrections costs on the GUI thread: engine.corrections on the largest in-memory result.

    .venv/bin/python benchmarks/corrections.py [--depth 4] [--size 2048]

A (depth, size, size) uint8 result (the in-memory budget, ``widgets._volume.IN_MEMORY_VOXELS``: 4 x 2048 x 2048)
with two corrected patches. Prints the milliseconds of: a full comparison of the layer with the network's labels
(after undo/redo and before every re-threshold), one slice's comparison (after a paint stroke), drawing the
corrections over new labels, and, for scale, the plain ``!=`` of the two volumes and one re-threshold.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_alnet.engine.corrections import Corrections
from napari_alnet.engine.postprocess import semantic_labels


def best_ms(run, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    shape = (args.depth, args.size, args.size)
    prob = np.random.default_rng(0).random(shape, dtype=np.float32)
    network = semantic_labels(prob, 0.5)
    shown = network.copy()
    shown[1, 100:300, 100:300] ^= 1
    shown[-1, 500:520, :] ^= 1
    record = Corrections(shape)
    record.reconcile(None, shown, network)
    fresh = semantic_labels(prob, 0.4)
    figures = {
        "full comparison (undo/redo, re-threshold)": best_ms(lambda: record.reconcile(None, shown, network)),
        "one slice (a paint stroke)": best_ms(lambda: record.reconcile((1,), shown[1], network[1])),
        "draw over new labels": best_ms(lambda: record.draw(fresh.copy())),
        "plain != of the volumes (scale)": best_ms(lambda: shown != network),
        "one re-threshold (scale)": best_ms(lambda: semantic_labels(prob, 0.4)),
    }
    print(f"{shape[0]} x {shape[1]} x {shape[2]} uint8 result, {record.voxels:,} corrected voxels on "
          f"{len(record.slices())} slices (best of 3):")
    for name, ms in figures.items():
        print(f"  {name:45s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
