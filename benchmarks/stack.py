"""Streaming segmentation of TIFF stacks (what ``alnet segment`` runs): slices/s, latency per slice and peak RSS
for 10 and 100 slices, per precision and pipeline mode.

    python benchmarks/stack.py [--size 512] [--depths 10 100] [--threads 2] [--model em|FILE] [--labels-only]
                               [--precisions auto fp32 bf16] [--modes auto serial pipelined] [--repeats 1]
                               [--wait-policies inherit passive active] [--end-to-end [--json]]

Each run is ``segment_files_job`` (labels + float32 probabilities) in a fresh subprocess, so its peak RSS is its
own. Streaming means the peak RSS of the deepest stack stays within 1.3x of the shallowest for every precision and
mode (exit code 1 if not). ``--repeats N`` runs each case N times, interleaved, and reports the median slices/s.
Default precisions: ``auto`` (what ``alnet segment`` picks here) and ``bf16`` where this CPU has it natively.
``--modes``: ``auto`` (the engine's choice, ``batch.pipeline_depth``), ``serial`` (no reader/writer threads) and
``pipelined`` (reader and writer threads, queues of 2 batches).
``--wait-policies``: the worker's ``OMP_WAIT_POLICY`` (``inherit``: as this process has it), one column each: with
libgomp's default (active: idle OpenMP threads spin), a core shared with any other work — the pipeline's threads,
another program — stalls every parallel region (docs/performance.md).
``--end-to-end``: instead, the ``alnet segment`` command itself on each stack (a fresh process: imports, model
load, the run, exit), wall time, beside the run's own seconds as the command reports them: end-to-end slices/s and
the share of the wall time outside the run (start-up and exit); ``--json``: those figures as one JSON object
(``benchmarks/speed_table.py`` imports ``end_to_end_runs``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import statistics
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
    from napari_alnet.engine import batch
    from napari_alnet.engine.batch import segment_files_job
    from napari_alnet.engine.progress import run_job
    from napari_alnet.io.pretrained import shipped_models
    from napari_alnet.model import ALNet

    torch.set_num_threads(args.threads)
    batch.QUEUE_DEPTH = {"auto": None, "serial": 0, "pipelined": 2}[args.mode]
    if args.model and (args.model != "em" or "em" in shipped_models()):
        model, name = load_model(args.model, device="cpu", precision=args.precision), args.model
    else:
        model = Segmenter.from_network(ALNet(), device="cpu", precision=args.precision)
        name = "untrained AL-Net (no em weights shipped)"
    start = time.perf_counter()
    summary = run_job(segment_files_job([Path(args.worker)], Path(args.out), model, overwrite=True,
                                        probabilities=not args.labels_only))
    seconds = time.perf_counter() - start
    if summary.failures:
        raise SystemExit(f"benchmark input failed: {summary.failures}")
    print(json.dumps({"slices": summary.slices, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "model": name,
                      "device": summary.device, "precision": summary.precision}))


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
    parser.add_argument("--precisions", nargs="+", choices=("auto", "fp32", "bf16", "int8"), default=None)
    parser.add_argument("--modes", nargs="+", choices=("auto", "serial", "pipelined"), default=["auto"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--wait-policies", nargs="+", choices=("inherit", "passive", "active"), default=["inherit"])
    parser.add_argument("--end-to-end", action="store_true", help="time the alnet segment command itself")
    parser.add_argument("--json", action="store_true", help="--end-to-end: one JSON object instead of the table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sys.exit(end_to_end(args) if args.end_to_end else run_all(args))


def default_precisions() -> list[str]:
    from napari_alnet.engine.devices import cpu_bf16_support

    return ["auto", "bf16"] if cpu_bf16_support().native else ["auto"]


def run_all(args: argparse.Namespace) -> int:
    """Every (precision, mode, depth) case ``repeats`` times, interleaved; prints the table; 1 if RSS grows."""
    precisions = args.precisions or default_precisions()
    modes = [f"{kind} {policy}" for kind in args.modes for policy in args.wait_policies]
    cases = list(itertools.product(precisions, modes, args.depths))
    results: dict[tuple, list[dict]] = {case: [] for case in cases}
    slices = em_slices(args.size)
    with tempfile.TemporaryDirectory(prefix="alnet-bench-") as tmp:
        for depth in args.depths:
            make_stack(Path(tmp) / f"stack{depth}.tif", depth, slices)
        for _ in range(args.repeats):
            for precision, mode, depth in cases:
                kind, policy = mode.split()
                cmd = [sys.executable, __file__, "--worker", str(Path(tmp) / f"stack{depth}.tif"),
                       "--out", str(Path(tmp) / "out"), "--threads", str(args.threads), "--model", args.model,
                       "--precision", precision, "--mode", kind,
                       *(["--labels-only"] if args.labels_only else [])]
                env = dict(os.environ)
                if policy != "inherit":
                    env["OMP_WAIT_POLICY"] = policy.upper()
                done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                results[(precision, mode, depth)].append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = results[cases[0]][0]
    print(f"{args.size} x {args.size} uint8 stacks, {first['model']}, {first['device']}, {args.threads} threads, "
          f"labels{'' if args.labels_only else ' + float32 probabilities'} streamed to TIFF; median of "
          f"{args.repeats} interleaved run(s)")
    print("| precision asked | ran in | mode, OMP_WAIT_POLICY | slices | slices/s | ms/slice | peak RSS MB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    verdict = 0
    for precision, mode in itertools.product(precisions, modes):
        rows = [(depth, results[(precision, mode, depth)]) for depth in args.depths]
        for depth, runs in rows:
            rate = statistics.median(r["slices"] / r["seconds"] for r in runs)
            rss = max(r["peak_rss_mb"] for r in runs)
            print(f"| {precision} | {runs[0]['precision']} | {mode} | {depth} | {rate:.2f} | {1000 / rate:.0f} | "
                  f"{rss:.0f} |")
        ratio = max(r["peak_rss_mb"] for r in rows[-1][1]) / max(r["peak_rss_mb"] for r in rows[0][1])
        ok = ratio <= RSS_LIMIT
        verdict |= not ok
        print(f"|  |  | peak RSS {rows[-1][0]} vs {rows[0][0]} slices: {ratio:.2f}x (limit {RSS_LIMIT}x) "
              f"{'OK' if ok else 'FAIL'} |  |  |  |")
    return verdict


def end_to_end_runs(*, size: int, depths: list[int], precisions: list[str], repeats: int, model: str,
                    labels_only: bool, threads: int) -> dict[tuple[str, int], list[dict]]:
    """``alnet segment`` of each stack depth per precision, ``repeats`` times interleaved: per run the wall time,
    the run's own seconds (as the command reports them) and the precision it ran in."""
    cases = list(itertools.product(precisions, depths))
    runs: dict[tuple[str, int], list[dict]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory(prefix="alnet-bench-") as tmp:
        for depth in depths:
            make_stack(Path(tmp) / f"stack{depth}.tif", depth, em_slices(size))
        for _, (precision, depth) in itertools.product(range(repeats), cases):
            cmd = [sys.executable, "-m", "napari_alnet.cli", "segment", str(Path(tmp) / f"stack{depth}.tif"),
                   "-o", str(Path(tmp) / "out"), "--model", model, "--device", "cpu", "--precision",
                   precision, "--overwrite", "--progress", "none", *([] if labels_only else ["--probabilities"])]
            start = time.perf_counter()  # torch's own thread count: --threads is the OME-Zarr path's option
            done = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                  env=os.environ | {"OMP_NUM_THREADS": str(threads)})
            wall = time.perf_counter() - start
            said = re.search(r"in ([0-9.]+) s .*on (\S+) \((\w+)\)", done.stdout + done.stderr)
            if said is None:
                raise SystemExit(f"no summary line in: {done.stdout + done.stderr}")
            runs[(precision, depth)].append({"wall": wall, "run": float(said[1]), "ran": said[3]})
    return runs


def end_to_end_medians(runs: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """Per (precision, depth): median wall and run seconds, end-to-end and run slices/s, the share outside."""
    rows = []
    for (precision, depth), found in runs.items():
        wall, run = statistics.median(r["wall"] for r in found), statistics.median(r["run"] for r in found)
        rows.append({"precision": precision, "ran": found[0]["ran"], "slices": depth, "wall": wall, "run": run,
                     "end_to_end_per_s": depth / wall, "run_per_s": depth / run, "outside": (wall - run) / wall})
    return rows


def end_to_end(args: argparse.Namespace) -> int:
    """``alnet segment`` of each stack depth, ``repeats`` times interleaved: wall time against the run's own."""
    load = os.getloadavg()[0]
    rows = end_to_end_medians(end_to_end_runs(size=args.size, depths=args.depths, precisions=args.precisions
                                              or ["auto"], repeats=args.repeats, model=args.model,
                                              labels_only=args.labels_only, threads=args.threads))
    if args.json:
        print(json.dumps({"load": [load, os.getloadavg()[0]], "size": args.size, "rows": rows}))
        return 0
    print(f"alnet segment, {args.size} x {args.size} uint8 TIFF stacks, {args.model}, cpu, {args.threads} threads, "
          f"labels{'' if args.labels_only else ' + float32 probabilities'}; {os.cpu_count()} cores, load average "
          f"{load:.1f}; median of {args.repeats} interleaved run(s)")
    print("| precision asked | ran in | slices | wall s | end-to-end slices/s | run slices/s | outside the run |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['precision']} | {r['ran']} | {r['slices']} | {r['wall']:.1f} | {r['end_to_end_per_s']:.2f} | "
              f"{r['run_per_s']:.2f} | {r['outside']:.0%} ({r['wall'] - r['run']:.1f} s) |")
    return 0


if __name__ == "__main__":
    main()
