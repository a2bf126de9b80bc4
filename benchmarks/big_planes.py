"""Planes larger than the whole-plane limit: ms per megapixel against a 2048² whole plane, and peak RSS.

    python benchmarks/big_planes.py [--sizes 2048 4096 8192 12000] [--precisions fp32 auto] [--model em]
                                    [--out float32|float16|uint8|memmap] [--threads 2] [--tile 1536]
    python benchmarks/big_planes.py --interleaved 4096 [--rounds 3] [--precisions fp32]

Each (size, precision) runs in a fresh subprocess (so ``ru_maxrss`` is that run's own peak): the engine's OpenMP
wait policy (``threads.prepare_for("segment")``) is set before torch loads, the model is loaded, a warm-up of the
shape the network will see runs (the 2048² plane itself, or a whole plane of the size's own tile shape: tiles are
balanced, ``tiling.balanced``; oneDNN prepares its kernels per shape, once per process), then one
``probability_job`` of a synthetic EM-like uint8 plane (a 512² ``em_like_stack`` slice mirrored out to the size,
so cells and membranes look alike everywhere; ``PRELUDE``, shared by both scripts) is timed. 2048²
runs whole, larger sizes in tiles. ``--out``: the probabilities' destination — float32 as ``predict`` returns
(default), or a caller-provided float16/uint8 array or float16 ``numpy.memmap`` (``probability_job(out=...)``).
The table gives ms/MP, the ratio to the 2048² whole plane of the same precision in the same run (the machine may
be shared: compare ratios from one run), peak RSS of the subprocess (image, output, model and torch included) and
the 1-minute load average after the run. ``--tile``: the tile size of planes over the limit (default: the
engine's ``tiling.DEFAULT_TILE``).

``--interleaved SIZE``: in one process, round-robin (so drifting load hits them alike), a 2048² whole plane, the
SIZE² plane tiled as the engine runs it and the same plane through the context-first two passes (every pixel's
encoder twice; what other networks, TTA and int8 run): median wall and process-CPU ms/MP, and each over the whole
plane's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from machine import cpu_name

#: What both subprocess scripts start with: ``size`` .. ``tile`` from argv, the OpenMP policy set before torch loads,
#: the model, the synthetic EM-like uint8 ``image`` of size² and ``warm_up(image)`` (the shapes the network will see).
PRELUDE = r"""
import json, os, resource, statistics, sys, time
from napari_alnet.engine.threads import prepare_for
prepare_for("segment")
import numpy as np
import torch
from napari_alnet import load_model
from napari_alnet.engine import tiling
from napari_alnet.engine.inference import Context, probability_job
from napari_alnet.engine.progress import run_job
from napari_alnet.io.sample_data import em_like_stack

size, precision, model, threads, tile = sys.argv[1:6]
size = int(size)
if int(tile):
    tiling.DEFAULT_TILE = int(tile)
torch.set_num_threads(int(threads))
seg = load_model(model, precision=precision)
base = em_like_stack(depth=1, size=512, cells=60, seed=3)[0][0]
reps = -(-size // 512)
row = np.concatenate([base if i % 2 == 0 else base[:, ::-1] for i in range(reps)], axis=1)
image = np.ascontiguousarray(np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps)])[:size, :size])
del base, row


def warm_up(plane):
    # oneDNN prepares its kernels per shape, once per process: a whole plane of the tiles' own (balanced) shape
    if plane.size <= tiling.WHOLE_IMAGE_PIXELS:
        return run_job(probability_job(seg, plane))
    h, w = tiling.plan_tiles(plane.shape, tiling.DEFAULT_TILE, 64)[0].size
    run_job(probability_job(seg, plane[:h, :w]))
"""

CHILD = PRELUDE + r"""
out_kind, tmp = sys.argv[6:8]
warm_up(image)
out = None
if out_kind in ("float16", "uint8"):
    out = np.empty(image.shape, out_kind)
elif out_kind == "memmap":
    out = np.lib.format.open_memmap(tmp + "/out.npy", mode="w+", dtype=np.float16, shape=image.shape)
kw = {} if out is None else {"out": out}
start = time.perf_counter()
probs = run_job(probability_job(seg, image, **kw))
seconds = time.perf_counter() - start
mean = float(probs[::7, ::7].astype(np.float32).mean())
print(json.dumps({"size": size, "precision": seg.precision, "requested": precision, "seconds": seconds,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "mean": mean,
                  "load": os.getloadavg()[0]}))
"""


INTERLEAVED = PRELUDE + r"""
rounds = int(sys.argv[6])
splits = Context.splits

def one_pass(on):
    Context.splits = splits if on else property(lambda self: False)

cases = {"whole 2048²": (image[:2048, :2048], True), f"tiled {size}²": (image, True),
         f"tiled {size}², two passes": (image, False)}
warm_up(image[:2048, :2048])
warm_up(image)
times = {k: ([], []) for k in cases}
for _ in range(rounds):
    for name, (img, on) in cases.items():
        one_pass(on)
        w, c = time.perf_counter(), time.process_time()
        run_job(probability_job(seg, img))
        mp = img.size / 1e6
        times[name][0].append((time.perf_counter() - w) * 1000 / mp)
        times[name][1].append((time.process_time() - c) * 1000 / mp)
print(json.dumps({"precision": seg.precision, "tile": tiling.plan_tiles(image.shape, tiling.DEFAULT_TILE, 64)[0].size,
                  "times": {k: [statistics.median(v[0]), statistics.median(v[1])] for k, v in times.items()}}))
"""


def interleaved(args: argparse.Namespace) -> None:
    for precision in args.precisions:
        done = subprocess.run([sys.executable, "-c", INTERLEAVED, str(args.interleaved), precision, args.model,
                               str(args.threads), str(args.tile), str(args.rounds)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{precision} failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        whole = r["times"]["whole 2048²"]
        print(f"\n{r['precision']}" + (" (auto)" if precision == "auto" else "") + f", tiles of {r['tile'][0]} px, "
              f"median of {args.rounds} rounds:")
        print("| plane | ms / MP (wall) | vs whole | ms / MP (CPU) | vs whole |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, (wall, cpu) in r["times"].items():
            print(f"| {name} | {wall:,.0f} | {wall / whole[0]:.2f}x | {cpu:,.0f} | {cpu / whole[1]:.2f}x |", flush=True)


def run_one(size: int, precision: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="alnet-big-") as tmp:
        done = subprocess.run([sys.executable, "-c", CHILD, str(size), precision, args.model, str(args.threads),
                               str(args.tile), args.out, tmp], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"size {size}, {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 12000])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--model", default="em")
    parser.add_argument("--out", choices=["float32", "float16", "uint8", "memmap"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=0, help="tile size of planes over the limit (0: the engine's)")
    parser.add_argument("--interleaved", type=int, default=0, metavar="SIZE",
                        help="round-robin in one process: 2048² whole, SIZE² tiled, SIZE² in two passes")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()} (on a shared machine compare ratios of one run); "
          f"{args.threads} threads, output {args.out}, tiles {args.tile or 'default'}")
    if args.interleaved:
        interleaved(args)
        return
    print("| plane | precision | path | s | ms / MP | vs 2048² whole | peak RSS | load |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for precision in args.precisions:
        base = None
        for size in args.sizes:
            r = run_one(size, precision, args)
            per_mp = r["seconds"] * 1000 / (size * size / 1e6)
            base = per_mp if size == 2048 else base
            ratio = f"{per_mp / base:.2f}x" if base else "—"
            label = f"{r['precision']}" + (" (auto)" if precision == "auto" else "")
            path = "whole" if size * size <= 2048 * 2048 else "tiled"
            print(f"| {size}² | {label} | {path} | {r['seconds']:.1f} | {per_mp:,.0f} | {ratio} | "
                  f"{r['rss_mb'] / 1024:.2f} GB | {r['load']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
