"""Live mode: seconds from a brush stroke to an updated prediction of the displayed 512² slice (issue 23 item 4).

    .venv/bin/python benchmarks/live.py [--size 512] [--strokes 8] [--base em] [--threads 2]

As in the Fine-tune dock's Live mode: ``training.live.live_job`` (the *Quick* recipe: frozen stages, 4 x 128² crops
centred on the painted pixels) runs in a worker thread from ``--base``; this thread paints scribble patches
(24 x 24 px of a generated EM stack's truth, 1 = membrane, 2 = background) into the labels at random moments and
posts them through the same ``Mailbox`` the dock posts to. A stroke's figure is the time from its paint to the
first preview of the displayed slice predicted with weights trained on it (``LiveConfig.min_steps`` steps at
least), plus the dock's wait after the last paint event before it posts (``POST_DELAY_S``). The first stroke also
builds the trainer (loads the base) and is shown apart. On a loaded machine set ``OMP_WAIT_POLICY=PASSIVE``
before it starts to see how much spinning OpenMP threads cost there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from machine import cpu_name
from napari_alnet.engine.progress import stop_job
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.training.finetune import FinetuneRequest, finetune_recipe
from napari_alnet.training.live import POST_DELAY_S, LiveConfig, Mailbox, live_job

PATCH = 24


def stroke(labels: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> None:
    """Paint one scribble patch of the truth (1 foreground, 2 background) into slice 0 of ``labels``."""
    size = truth.shape[-1]
    y, x = (int(v) for v in rng.integers(0, size - PATCH, 2))
    labels[0, y:y + PATCH, x:x + PATCH] = np.where(truth[0, y:y + PATCH, x:x + PATCH], 1, 2)


def consume(job, previews: list[tuple[float, int]], stop: threading.Event, result: list) -> None:
    """The worker: drive the job, noting (time, snapshot version) of every preview, until ``stop``."""
    for report in job:
        if "preview" in report.metrics:
            previews.append((time.perf_counter(), report.metrics["snapshot"]))
        if stop.is_set():
            result.append(stop_job(job))
            return


def latency(previews: list[tuple[float, int]], version: int, posted: float) -> float | None:
    """Seconds from ``posted`` to the first preview trained on snapshot ``version`` or a later one."""
    after = [t for t, v in list(previews) if v >= version and t >= posted]
    return after[0] - posted + POST_DELAY_S if after else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--strokes", type=int, default=8)
    parser.add_argument("--base", default="em")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    images, truth = em_like_stack(depth=2, size=args.size, cells=max(8, args.size // 8), seed=3)
    labels = np.zeros(images.shape, np.uint8)
    config = LiveConfig()
    with tempfile.TemporaryDirectory() as folder:
        request = FinetuneRequest(images, labels, mode="scribbles", base=args.base,
                                  out=Path(folder) / "live.safetensors", train=finetune_recipe("quick"),
                                  image_name="em-like")
        box, previews, stop, result = Mailbox(view=0), [], threading.Event(), []
        worker = threading.Thread(target=consume, args=(live_job(request, box, config=config), previews, stop,
                                                          result))
        worker.start()
        figures = [measure(box, labels, truth, rng, previews) for _ in range(args.strokes + 1)]
        stop.set()
        worker.join()
    report(args, config, figures, result[0] if result else None)


def measure(box: Mailbox, labels: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
            previews: list[tuple[float, int]]) -> float:
    """Paint a stroke at a random moment (0.5-4 s after the previous one was shown), post it, wait for its
    preview; its seconds."""
    time.sleep(float(rng.uniform(0.5, 4.0)))
    stroke(labels, truth, rng)
    version, posted = box.post(labels), time.perf_counter()
    while (seconds := latency(previews, version, posted)) is None:
        time.sleep(0.02)
    return seconds



def report(args, config: LiveConfig, figures: list[float], result) -> None:
    first, rest = figures[0], figures[1:]
    print(f"Live mode, stroke -> updated prediction of the displayed {args.size}x{args.size} slice, base "
          f"{args.base}, Quick recipe, {args.threads} threads, torch {torch.__version__}")
    print(f"  CPU: {cpu_name()}, "
          f"load average {os.getloadavg()[0]:.1f} (a shared machine: other jobs may run beside this one), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp default)')}")
    print(f"  preview every >= {config.preview_seconds:.1f} s after >= {config.min_steps} steps on the newest "
          f"strokes; the dock posts {POST_DELAY_S:.1f} s after the last paint event (included)")
    print(f"  first stroke (builds the trainer, loads {args.base}): {first:.1f} s")
    if rest:
        print(f"  next {len(rest)} strokes: median {statistics.median(rest):.1f} s, max {max(rest):.1f} s "
              f"({', '.join(f'{s:.1f}' for s in rest)})")
    if result is not None:
        print(f"  trained {result.steps_done} steps in {result.wall_seconds:.0f} s "
              f"({result.wall_seconds / max(result.steps_done, 1):.2f} s per step with previews)")


if __name__ == "__main__":
    main()
