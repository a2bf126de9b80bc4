"""Blockwise volume segmentation (``alnet segment VOL.zarr``): peak RSS per worker, slices/s, scheduling overhead,
and an extrapolation to 1,000 x 4,096 x 4,096.

    python benchmarks/volume.py all [--gb 1 4] [--plane 2048] [--minutes 8] [--model em] [--out /tmp/alnet-bench]
    python benchmarks/volume.py generate --gb 4 --plane 2048 --out /tmp/alnet-bench/vol-4gb.ome.zarr
    python benchmarks/volume.py run SOURCE --minutes 8 [--workers 2 --threads 1] [--block Z Y X] [--json F]
                                   [--whole-planes]   # as before engine.volume.strips, for before/after
    python benchmarks/volume.py overhead SOURCE       # Dask's own cost per block task, in ms
    python benchmarks/volume.py strips SOURCE [--planes 4] [--rounds 3] [--variants 512:0 ...] [--reused-memory]

``generate`` writes an OME-Zarr (v0.5, chunks 1 x 512 x 512, 4 x 4 x 50 nm) of uint8 EM planes tiled lazily with
dask from the ISBI 2012 slices (``../shared/data/isbi2012``; synthetic EM-like planes where it is absent), each
plane a random flip/roll of a different slice, so no block is a copy of another. Keep it out of the repository.

``run`` segments SOURCE into a fresh output for at most ``--minutes`` (the job is stopped after that block; a
stopped run is resumable, and figures are per block, so a budget shorter than the whole volume still measures
them) in a subprocess of its own, sampling the RSS of every process it starts (the client and each Dask worker)
every 0.2 s. ``block_compute_s`` is the time of ``Segmenter.predict`` on one block already in memory (measured
before the run, so under a different load on a shared machine); each block task also reports its own inference
seconds (reading included) and task seconds. ``scheduling_overhead`` = (a worker's wall time per block - task
seconds) / task seconds: the scheduler, state records and progress; ``overhead_beyond_inference`` adds writing the
outputs.

``all`` generates the volumes, runs in-process on each, ``--workers 2 --threads 1`` on the largest and one
plane-cutting run (4,096² planes, the path a 4,096² volume takes), writes ``report.json`` and prints the table and
the extrapolation. The model of the extrapolation: time = slices x (seconds per slice of that plane size on one
worker, measured) / workers / efficiency, where efficiency is measured for 2 workers on this machine and assumed
for 8 and 64 workers on a cluster whose workers each have the cores of one here and storage that keeps up
(no contention between workers; the scheduler's per-task cost is measured and added per block).

``strips`` times one block's network work both ways in one process, round-robin (so both see the same load):
``probability_job`` on the planes as before (one whole-plane forward each) and as the engine now runs it
(``engine.volume.strips``: high-resolution parts in row strips, plus variants of the strip rows and striped
encoder stages), in ms per megapixel, and checks that the probabilities are equal bit for bit; with
``--reused-memory`` inside ``engine.volume.memory.reused_memory`` as a run is (glibc keeps big buffers).

Like ``alnet segment``, every command first chooses libgomp's wait policy for segment work
(``engine.threads.prepare_for``: a brief spin on an idle machine, ``PASSIVE`` on a busy one; ``OMP_WAIT_POLICY``
in the environment wins, and ``OMP_WAIT_POLICY=DEFAULT`` gets libgomp's own default, with a warning). Each
command prints the policy in effect.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from napari_alnet.engine.threads import prepare_for

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"


def source_slices() -> np.ndarray:
    """The 30 ISBI training slices (uint8, 512 x 512), or generated EM-like ones."""
    folder = Path(os.environ.get("NAPARI_ALNET_DATA", DATA.parent)) / "isbi2012" / "train" / "images"
    files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.tif"))
    if files:
        from skimage.io import imread

        return np.stack([imread(f) for f in files]).astype(np.uint8)
    from napari_alnet.io.sample_data import em_like_stack

    return em_like_stack(depth=30, size=512, cells=240)[0]


def generate(out: Path, gb: float, plane: int) -> Path:
    """A lazily built OME-Zarr of about ``gb`` GB (uint8 planes of ``plane`` x ``plane``)."""
    import dask
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_image

    slices = source_slices()
    depth = max(1, round(gb * 1e9 / plane / plane))
    reps = -(-plane // slices.shape[1])

    def one(z: int) -> np.ndarray:
        rng = np.random.default_rng(z)
        tiles = [[np.rot90(slices[rng.integers(len(slices))], rng.integers(4)) for _ in range(reps)]
                 for _ in range(reps)]
        img = np.block(tiles)[:plane, :plane]
        return np.roll(img, (rng.integers(plane), rng.integers(plane)), (0, 1))[None]

    parts = [da.from_delayed(dask.delayed(one)(z), (1, plane, plane), np.uint8) for z in range(depth)]
    volume = da.concatenate(parts).rechunk((1, 512, 512))
    if out.exists():
        shutil.rmtree(out)
    group = zarr.open_group(out, mode="w")
    write_image(volume, group, axes="zyx", scale={"z": 0.05, "y": 0.004, "x": 0.004},
                axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"}, scale_factors=[],
                storage_options={"chunks": (1, 512, 512)})
    print(f"wrote {out}: {depth} x {plane} x {plane} uint8 ({depth * plane * plane / 1e9:.2f} GB)", flush=True)
    return out


class RssSampler(threading.Thread):
    """Peak RSS (MB) of this process and of each descendant (Dask workers), sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            procs = [self.me, *self.me.children(recursive=True)]
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    name = "client" if p.pid == self.me.pid else f"pid{p.pid}"
                    self.peaks[name] = max(self.peaks.get(name, 0.0), rss)
                except Exception:  # a process that ended between listing and reading
                    continue
            time.sleep(0.2)


def measure(args: argparse.Namespace) -> dict:
    """One run of ``segment_volume_job`` with a time budget; the figures as a dict."""
    import torch

    from napari_alnet.engine.progress import stop_job
    from napari_alnet.engine.segmenter import load_model
    from napari_alnet.engine.volume import plan_volume, segment_volume_job

    model = load_model(args.model, device="cpu")
    if args.whole_planes:  # the engine before strips (in-process runs only: workers import their own tasks)
        from napari_alnet.engine.volume import tasks as volume_tasks

        volume_tasks.striped = lambda segmenter: segmenter
    if args.whole_planes or args.fresh_pages:  # glibc maps and unmaps each big buffer, as before
        import contextlib

        from napari_alnet.engine.volume import run as volume_run

        volume_run.reused_memory = contextlib.nullcontext
    if args.threads and not args.workers:
        torch.set_num_threads(args.threads)
    volume, plan = plan_volume(model, args.source, block=tuple(args.block) if args.block else None)
    dest = Path(args.dest)
    shutil.rmtree(dest, ignore_errors=True)
    compute = block_compute(model, volume, plan)
    sampler = RssSampler()
    sampler.start()
    job = segment_volume_job(model, args.source, dest, block=plan.block, workers=args.workers or None,
                             threads=args.threads or None, instances=args.instances)
    stamps, tasks, start, summary = [], [], None, None
    try:
        while True:
            progress = next(job)
            now = time.perf_counter()
            if progress.metrics.get("phase") == "start":
                start = now
            elif progress.metrics.get("phase") == "blocks":
                stamps.append(now)
                tasks.append((progress.metrics["inference_s"], progress.metrics["task_s"]))
            if start is not None and now - start > args.minutes * 60:
                summary = stop_job(job)
                break
    except StopIteration as done:
        summary = done.value
    sampler.stop.set()
    sampler.join()
    result = report(args, model, volume, plan, compute, stamps, start, summary, sampler.peaks)
    return result | task_figures(tasks, result["block_wall_s"], args.workers or 1)


def task_figures(tasks: list[tuple[float, float]], wall: float, workers: int) -> dict:
    """Per-block inference and task seconds (measured inside the task, so under the same load as the run) and
    the overheads: outside the task (scheduling, state, progress) and outside inference (plus writing)."""
    if not tasks:
        return {}
    steady = tasks[1:] if len(tasks) > 2 else tasks
    inference = float(np.median([t[0] for t in steady]))
    task = float(np.median([t[1] for t in steady]))
    effective = wall * workers  # a worker's wall time per block
    return {"block_inference_s": inference, "block_task_s": task,
            "scheduling_overhead": (effective - task) / task if task else None,
            "overhead_beyond_inference": (effective - inference) / inference if inference else None}


def block_compute(model, volume, plan) -> float:
    """Seconds of ``predict`` on one (middle) block already in memory (the pure compute of a block)."""
    blocks = plan.blocks()
    block = blocks[len(blocks) // 2]
    data = np.asarray(volume.reader.read(block.region))
    if plan.cuts_planes:
        return float("nan")  # a cut block has no in-memory equivalent; its compute is measured per slice instead
    model.predict(data[:1])  # warm-up
    t = time.perf_counter()
    model.predict(data)
    return time.perf_counter() - t


def report(args, model, volume, plan, compute, stamps, start, summary, peaks) -> dict:
    walls = np.diff([start, *stamps]) if stamps else np.array([])
    steady = walls[1:] if len(walls) > 2 else walls
    per_block = float(np.median(steady)) if len(steady) else float("nan")
    slices_per_block = plan.block[0] * (plan.block[1] * plan.block[2]) / (plan.shape[1] * plan.shape[2])
    workers = {k: round(v) for k, v in sorted(peaks.items()) if k != "client"}
    return {"source": str(args.source), "shape": list(volume.shape), "gb": float(np.prod(volume.shape)) / 1e9,
            "block": list(plan.block), "blocks": len(plan), "blocks_done": summary.blocks_run if summary else 0,
            "workers": args.workers or 0, "threads": args.threads or torch_threads(),
            "seconds": summary.seconds if summary else None, "slices": summary.slices if summary else 0,
            "slices_per_s": (summary.slices / (stamps[-1] - start)) if stamps else 0.0,
            "block_wall_s": per_block, "block_compute_s": compute,
            # in-process only: with workers, blocks finish in parallel and a block's compute differs (1 thread)
            "overhead": ((per_block - compute) / compute if compute == compute and compute > 0 and not args.workers
                         else None),
            "slices_per_block": slices_per_block, "complete": bool(summary and summary.complete),
            "ms_per_megapixel": (1000 * (stamps[-1] - start) / (summary.slices * plan.shape[1] * plan.shape[2] / 1e6)
                                 if stamps and summary and summary.slices else None),
            "precision": model.precision, "whole_planes": bool(args.whole_planes),
            "fresh_pages": bool(args.whole_planes or args.fresh_pages),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default"),
            "peak_rss_mb": {"client": round(peaks.get("client", 0.0)), **workers},
            "load_average": os.getloadavg()}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _noop(work, block) -> int:
    return block.index


def dask_overhead(source: Path, model: str, tasks: int = 200) -> dict:
    """Milliseconds per block task that Dask itself costs: no-op tasks taking a real block task's arguments (the
    scattered ``Work``: model, reader, output arrays, settings and plan; and the block) through a 2-worker
    LocalCluster on loopback."""
    import logging

    from distributed import Client, LocalCluster, as_completed

    from napari_alnet.engine.segmenter import load_model
    from napari_alnet.engine.volume import prepare_volume_run
    from napari_alnet.engine.volume.tasks import Work

    run = prepare_volume_run(load_model(model, device="cpu"), source, Path("/tmp/alnet-bench/overhead.zarr"),
                             overwrite=True)
    blocks = (run.plan.blocks() * (tasks // len(run.plan) + 1))[:tasks]
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        work = Work(run.outputs, run.settings, run.plan, segmenter=run.segmenter, reader=run.volume.reader)
        shared = client.scatter(work, broadcast=True, hash=False)
        client.submit(_noop, shared, blocks[0], pure=False).result()
        start = time.perf_counter()
        futures = [client.submit(_noop, shared, b, pure=False, retries=3) for b in blocks]
        for _ in as_completed(futures):
            pass
        seconds = time.perf_counter() - start
    shutil.rmtree("/tmp/alnet-bench/overhead.zarr", ignore_errors=True)
    return {"tasks": tasks, "ms_per_task_per_worker": 1000 * seconds * 2 / tasks}


def run_one(source: Path, dest: Path, minutes: float, model: str, workers: int = 0, threads: int = 0,
            block: list[int] | None = None) -> dict:
    """``measure`` in a subprocess of its own (so its peak RSS is its own)."""
    cmd = [sys.executable, __file__, "run", str(source), "--dest", str(dest), "--minutes", str(minutes),
           "--model", model, "--json", str(dest) + ".json", "--workers", str(workers), "--threads", str(threads)]
    if block:
        cmd += ["--block", *map(str, block)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    result = json.loads(Path(str(dest) + ".json").read_text())
    print(json.dumps(result), flush=True)
    return result


def extrapolate(rows: dict) -> dict:
    """Hours for 1,000 x 4,096 x 4,096 on 1, 8 and 64 workers (see the module docstring for the model)."""
    inproc, two, cut = rows["inprocess_largest"], rows.get("workers2"), rows.get("cut")
    per_slice_2048 = 1 / inproc["slices_per_s"]
    if cut and cut["slices_per_s"]:
        per_slice_4096 = 1 / cut["slices_per_s"]
        basis = "measured on 4,096^2 planes (plane-cutting blocks, context pass included)"
    else:
        per_slice_4096 = 4 * 1.5 * per_slice_2048
        basis = "4 x the 2,048^2 figure x 1.5 (halo of plane-cutting blocks), not measured"
    efficiency = 1.0
    if two and two["slices_per_s"]:
        efficiency = min(1.0, two["slices_per_s"] / inproc["slices_per_s"])
    hours = {n: 1000 * per_slice_4096 / (n * (efficiency if n > 1 else 1.0)) / 3600 for n in (1, 8, 64)}
    return {"seconds_per_4096_slice_one_worker": per_slice_4096, "basis": basis,
            "parallel_efficiency_2_workers_here": efficiency, "hours": hours}


def run_all(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    volumes = {}
    for gb in args.gb:
        path = out / f"vol-{gb:g}gb.ome.zarr"
        if not (path / "zarr.json").exists():
            generate(path, gb, args.plane)
        volumes[gb] = path
    for gb in sorted(args.gb):
        rows[f"inprocess_{gb:g}gb"] = run_one(volumes[gb], out / f"seg-{gb:g}gb.zarr", args.minutes, args.model)
    largest = max(args.gb)
    rows["inprocess_largest"] = rows[f"inprocess_{largest:g}gb"]
    rows["workers2"] = run_one(volumes[largest], out / "seg-workers2.zarr", args.minutes, args.model, 2, 1)
    cut_source = out / "vol-cut-4096.ome.zarr"
    if not (cut_source / "zarr.json").exists():
        generate(cut_source, 4096 * 4096 / 1e9, 4096)  # one 4,096^2 slice
    rows["cut"] = run_one(cut_source, out / "seg-cut.zarr", args.minutes, args.model)
    rows["extrapolation"] = extrapolate(rows)
    (out / "report.json").write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


def strip_speed(source: Path, *, model: str, planes: int, rounds: int, precision: str,
                shapes: list[tuple[int, int]]) -> dict:
    """ms per megapixel of ``probability_job`` on ``planes`` planes of ``source``, whole-plane forwards against
    the striped ones (the engine's and ``shapes``: (rows, encoder stages); round-robin, ``rounds`` rounds), and
    whether each variant's probabilities equal the whole-plane ones bit for bit."""
    import torch

    from napari_alnet.engine.inference import probability_job
    from napari_alnet.engine.progress import run_job
    from napari_alnet.engine.segmenter import load_model
    from napari_alnet.engine.volume.strips import ENCODER_STAGES, STRIP_ROWS, striped
    from napari_alnet.io.volumes import open_volume

    segmenter = load_model(model, device="cpu", precision=precision)
    volume = open_volume(source)
    middle = volume.shape[0] // 2
    raw = np.asarray(volume.reader.read((slice(middle, middle + planes), slice(None), slice(None))))
    variants = {"whole": segmenter, f"engine ({STRIP_ROWS} rows, {ENCODER_STAGES} encoder stages)": striped(segmenter)}
    for rows, stages in shapes:
        variants[f"{rows} rows, {stages} encoder stages"] = striped(segmenter, rows=rows, stages=stages)
    times: dict[str, list[float]] = {k: [] for k in variants}
    results = {k: run_job(probability_job(m, raw[:1])) for k, m in variants.items()}  # warm-up
    megapixels = raw.shape[0] * raw.shape[1] * raw.shape[2] / 1e6
    for _ in range(rounds):
        for name, m in variants.items():
            start = time.perf_counter()
            results[name] = run_job(probability_job(m, raw))
            times[name].append(1000 * (time.perf_counter() - start) / megapixels)
    base = results["whole"]
    rows = {name: {"ms_per_mp_median": float(np.median(t)), "ms_per_mp_min": float(np.min(t)),
                   "vs_whole": float(np.median(times["whole"]) / np.median(t)),
                   "bitwise_equal": bool(np.array_equal(results[name], base)),
                   "max_abs_diff": float(np.abs(results[name] - base).max())} for name, t in times.items()}
    return {"source": str(source), "planes": list(raw.shape), "precision": segmenter.precision,
            "threads": torch.get_num_threads(), "rounds": rounds, "variants": rows}


def main() -> None:
    policy = prepare_for("segment")  # as alnet segment does, before torch loads
    why = os.environ.get("NAPARI_ALNET_OMP_REASON", "set in the environment")
    print(f"OMP_WAIT_POLICY={policy or 'libgomp default'} ({why}); load {Path('/proc/loadavg').read_text().strip()}",
          flush=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("all")
    a.add_argument("--gb", type=float, nargs="+", default=[1.0, 4.0])
    a.add_argument("--plane", type=int, default=2048)
    a.add_argument("--minutes", type=float, default=8.0)
    a.add_argument("--model", default="em")
    a.add_argument("--out", default="/tmp/alnet-bench")
    o = sub.add_parser("overhead", help="Dask's own cost per block task (no-op tasks with real arguments)")
    o.add_argument("source")
    o.add_argument("--model", default="em")
    st = sub.add_parser("strips", help="whole-plane vs striped forwards, interleaved in one process")
    st.add_argument("source")
    st.add_argument("--model", default="em")
    st.add_argument("--planes", type=int, default=4)
    st.add_argument("--rounds", type=int, default=3)
    st.add_argument("--precision", default="auto")
    st.add_argument("--variants", nargs="*", default=["256:2", "512:0", "512:1", "1024:0"],
                    help="strip shapes besides the engine's, as ROWS:ENCODER_STAGES")
    st.add_argument("--reused-memory", action="store_true",
                    help="as a run does: glibc keeps big buffers for reuse (engine.volume.memory)")
    g = sub.add_parser("generate")
    g.add_argument("--gb", type=float, default=4.0)
    g.add_argument("--plane", type=int, default=2048)
    g.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("source")
    r.add_argument("--dest", required=True)
    r.add_argument("--minutes", type=float, default=8.0)
    r.add_argument("--model", default="em")
    r.add_argument("--workers", type=int, default=0)
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--block", type=int, nargs=3)
    r.add_argument("--instances", default=None)
    r.add_argument("--json")
    r.add_argument("--whole-planes", action="store_true",
                   help="the engine before this change: one whole-plane forward per plane (no engine.volume.strips,"
                        " in-process only) and fresh pages for every big buffer (no engine.volume.memory)")
    r.add_argument("--fresh-pages", action="store_true", help="strips, but without engine.volume.memory")
    args = parser.parse_args()
    if args.command == "all":
        run_all(args)
    elif args.command == "overhead":
        print(json.dumps(dask_overhead(Path(args.source), args.model)), flush=True)
    elif args.command == "strips":
        import contextlib

        from napari_alnet.engine.volume.memory import reused_memory

        with reused_memory() if args.reused_memory else contextlib.nullcontext():
            result = strip_speed(Path(args.source), model=args.model, planes=args.planes, rounds=args.rounds,
                                 precision=args.precision,
                                 shapes=[tuple(int(v) for v in text.split(":")) for text in args.variants])
        result |= {"reused_memory": args.reused_memory, "load_average": os.getloadavg()}
        print(json.dumps(result, indent=2), flush=True)
    elif args.command == "generate":
        generate(Path(args.out), args.gb, args.plane)
    else:
        result = measure(args)
        text = json.dumps(result, indent=2)
        if args.json:
            Path(args.json).write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
