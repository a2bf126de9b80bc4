"""Streaming segmentation of TIFF stacks: slices/s, latency per slice and peak RSS for 10 and 100 slices.

    python benchmarks/stack.py [--size 512] [--depths 10 100] [--threads 2] [--model em|FILE] [--labels-only]

Each depth runs ``segment_files_job`` (labels + float32 probabilities) in a fresh subprocess, so its peak RSS is its
own. Streaming means the peak RSS of the deepest stack stays within 1.3x of the shallowest (exit code 1 if not).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_LIMIT = 1.3


def em_slices(size: int):
    """10 generated EM-like uint8 slices of ``size`` x ``size``."""
    from napari_alnet.io.sample_data import em_like_stack

    return em_like_stack(depth=10, size=size, cells=max(8, round(240 * (size / 512) ** 2)))[0]


def make_stack(path: Path, depth: int, slices) -> None:
    """An uncompressed ImageJ stack of ``depth`` slices (``slices`` repeated), written plane by plane."""
    from napari_alnet.io.stack_reader import PixelSize
    from napari_alnet.io.stack_writer import TiffStackWriter

    with TiffStackWriter(path, (depth, *slices.shape[1:]), slices.dtype, PixelSize(0.004, 0.004, 0.05, "um"),
                         compress=False) as writer:
        for z in range(depth):
            writer.write(slices[z % len(slices)])
        writer.finish()


def worker(args: argparse.Namespace) -> None:
    """Segment one stack and print the figures as JSON (runs in its own process)."""
    import torch

    from napari_alnet.api import Segmenter, load_model
    from napari_alnet.engine.batch import segment_files_job
    from napari_alnet.engine.progress import run_job
    from napari_alnet.io.pretrained import shipped_models
    from napari_alnet.model import ALNet

    torch.set_num_threads(args.threads)
    if args.model and (args.model != "em" or "em" in shipped_models()):
        model, name = load_model(args.model, device="cpu"), args.model
    else:
        model, name = Segmenter.from_network(ALNet()), "untrained AL-Net (no em weights shipped)"
    start = time.perf_counter()
    summary = run_job(segment_files_job([Path(args.worker)], Path(args.out), model, overwrite=True,
                                        probabilities=not args.labels_only))
    seconds = time.perf_counter() - start
    if summary.failures:
        raise SystemExit(f"benchmark input failed: {summary.failures}")
    print(json.dumps({"slices": summary.slices, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "model": name,
                      "device": summary.device}))


def peak_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM on Linux (``ru_maxrss`` survives ``execve``, so it would include the
    parent's peak before the fork), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="em", help="em (if shipped, else an untrained AL-Net) or a weight file")
    parser.add_argument("--labels-only", action="store_true", help="do not write probabilities")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    slices = em_slices(args.size)
    with tempfile.TemporaryDirectory(prefix="alnet-bench-") as tmp:
        for depth in args.depths:
            stack = Path(tmp) / f"stack{depth}.tif"
            make_stack(stack, depth, slices)
            cmd = [sys.executable, __file__, "--worker", str(stack), "--out", str(Path(tmp) / f"out{depth}"),
                   "--threads", str(args.threads), "--model", args.model]
            if args.labels_only:
                cmd.append("--labels-only")
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append((depth, json.loads(done.stdout.strip().splitlines()[-1])))
    first = rows[0][1]
    print(f"{args.size} x {args.size} uint8 stacks, {first['model']}, {first['device']}, {args.threads} threads, "
          f"labels{'' if args.labels_only else ' + float32 probabilities'} streamed to TIFF")
    print(f"{'slices':>7}{'slices/s':>10}{'ms/slice':>10}{'peak RSS MB':>13}")
    for depth, r in rows:
        print(f"{depth:>7}{r['slices'] / r['seconds']:>10.2f}{r['seconds'] / r['slices'] * 1000:>10.0f}"
              f"{r['peak_rss_mb']:>13.0f}")
    ratio = rows[-1][1]["peak_rss_mb"] / rows[0][1]["peak_rss_mb"]
    verdict = "OK" if ratio <= RSS_LIMIT else "FAIL"
    print(f"peak RSS {rows[-1][0]} vs {rows[0][0]} slices: {ratio:.2f}x (limit {RSS_LIMIT}x) {verdict}")
    if verdict != "OK":
        sys.exit(1)


if __name__ == "__main__":
    main()
