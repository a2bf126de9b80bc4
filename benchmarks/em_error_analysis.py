"""What the paper's ISBI 2012 figures imply, and where an EM model's errors lie.

    python benchmarks/em_error_analysis.py [--model em] [--slices 21 22 ... 29]

1. The class balance of the test slices bounds cell-interior IoU by pixel accuracy (and back): with interior
   fraction p and error rate e = 1 - accuracy, 1 - e/p <= IoU <= p / (p + e), per slice.
2. For the model: accuracy at several thresholds, and the share of wrong pixels within 1, 2, 3 and 5 px of a
   ground-truth membrane edge (errors of membrane width rather than missed membranes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_alnet import load_model, predict
from napari_alnet.io.stack_reader import read_image

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train"
PAPER_ACCURACY, PAPER_IOU = 0.9406, 0.8963


def implied_bands(interior_fractions: np.ndarray) -> None:
    p = interior_fractions
    e = 1 - PAPER_ACCURACY
    print(f"cell-interior fraction per slice: {p.min():.3f}-{p.max():.3f} (mean {p.mean():.3f})")
    print(f"accuracy {PAPER_ACCURACY} implies interior IoU {np.mean(1 - e / p):.4f}-{np.mean(p / (p + e)):.4f}")
    q = 1 - PAPER_IOU
    print(f"interior IoU {PAPER_IOU} implies accuracy {np.mean(1 - q / PAPER_IOU * p):.4f}-{np.mean(1 - q * p):.4f}")


def edge_distance(membrane: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the nearest boundary between membrane and interior."""
    edge = membrane ^ ndi.binary_erosion(membrane, border_value=1)
    edge |= ~membrane ^ ndi.binary_erosion(~membrane, border_value=1)
    return ndi.distance_transform_edt(~edge)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="em")
    parser.add_argument("--slices", type=int, nargs="+", default=list(range(21, 30)))
    args = parser.parse_args()
    if not ROOT.is_dir():
        raise SystemExit(f"ISBI 2012 not found at {ROOT}")
    images = [read_image(ROOT / "images" / f"{i:02d}.png") for i in args.slices]
    membranes = [read_image(ROOT / "labels" / f"{i:02d}.png") == 0 for i in args.slices]
    implied_bands(np.array([1 - m.mean() for m in membranes]))

    model = load_model(args.model)
    probs = [predict(model, im) for im in images]
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        acc = np.mean([((p > t) == m).mean() for p, m in zip(probs, membranes, strict=True)])
        print(f"threshold {t}: accuracy {acc:.4f}")
    t = model.metadata.threshold
    limits = (1, 2, 3, 5)
    near = np.zeros(len(limits))
    wrong = 0
    for p, m in zip(probs, membranes, strict=True):
        err = (p > t) != m
        d = edge_distance(m)[err]
        near += [np.count_nonzero(d <= lim) for lim in limits]
        wrong += err.sum()
    shares = ", ".join(f"<= {lim} px: {n / wrong:.0%}" for lim, n in zip(limits, near, strict=True))
    print(f"wrong pixels at threshold {t}: {wrong / sum(m.size for m in membranes):.4f}; "
          f"within a membrane edge {shares}")


if __name__ == "__main__":
    main()
