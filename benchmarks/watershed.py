"""Time and peak memory of the blockwise watershed split of one window (``instances3d.split_block``).

    python benchmarks/watershed.py --window 48 544 544          # the window of --block 16 512 512, halo 16

The mask is a thresholded smooth random field (about two thirds foreground: large touching regions, the hard
case); the figures are per window voxel. Run it in a fresh process: peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label

from napari_alnet.engine.instances3d import split_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, nargs=3, default=(48, 544, 544), metavar=("Z", "Y", "X"))
    parser.add_argument("--mode", choices=("3d", "2d"), default="3d")
    parser.add_argument("--sigma", type=float, default=4.0, help="smoothness of the random field (voxels)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mask = ndi.gaussian_filter(rng.normal(size=tuple(args.window)).astype(np.float32), args.sigma) < 0.01
    regions = int(label(mask, connectivity=1).max())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    ids = split_block(mask, args.mode, (1.0, 1.0, 1.0))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n = mask.size
    print(f"window {tuple(args.window)} ({n / 1e6:.1f} M voxels, {mask.mean():.0%} foreground, {regions} regions -> "
          f"{int(ids.max())} objects, {args.mode}): {seconds:.1f} s = {seconds / n * 1e9:.0f} ns per voxel; "
          f"peak RSS {peak / 2**30:.2f} GiB, {(peak - before) / n:.0f} bytes per voxel above the mask")


if __name__ == "__main__":
    main()
