"""Training steps/s beside inference latency, per OpenMP wait policy: run before and after any change to threading.

    python benchmarks/training_speed.py [--policies engine passive active unset spin10k] [--steps 12] [--threads 2]

Each column runs in a fresh process, because libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it:
``engine`` = whatever ``napari_alnet`` chooses for the kind of work (``engine.threads``: training and inference
processes are set up as ``alnet train`` / ``alnet segment`` set them up); ``passive`` / ``active`` / ``unset`` force
the environment before anything is imported; ``spin10k`` is libgomp's default with ``GOMP_SPINCOUNT=10000``.
Training = ``Trainer.step`` from ``em`` on 3 generated EM-like
512² slices (crop 256, batch 4, the Fine-tune dock's recipe); inference = ``Segmenter.predict`` of one 512² slice
(median of ``--predicts``). Name the CPU beside the figures (printed first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from machine import cpu_name

POLICIES = ("engine", "passive", "active", "unset", "spin10k")


def measure(kind: str, steps: int, predicts: int, threads: int) -> dict[str, float]:
    """In this process: (training steps/s, median predict ms) for the kind of work ``kind``."""
    from napari_alnet.engine.threads import prepare_for

    if os.environ.get("NAPARI_ALNET_BENCH_FORCED") != "1":  # the engine's choice; else the environment as given
        prepare_for(kind)
    import numpy as np
    import torch

    from napari_alnet import load_model
    from napari_alnet.io.sample_data import em_like_stack
    from napari_alnet.training.data import pairs_from_arrays
    from napari_alnet.training.loop import TrainConfig, Trainer

    torch.set_num_threads(threads)
    images, masks = em_like_stack(depth=4, size=512)
    segmenter = load_model("em", device="cpu")
    out = {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}
    if kind == "train":
        pairs = pairs_from_arrays(images[:3], masks[:3], segmenter.metadata.normalization)
        trainer = Trainer(pairs, pairs[:1], segmenter.metadata, os.devnull,
                          config=TrainConfig(epochs=1, lr=1e-3, crop=256, batch_size=4, steps_per_epoch=steps),
                          init="em")
        trainer.step()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        out["steps_per_s"] = steps / (time.perf_counter() - start)
    else:
        segmenter.predict(images[3])  # warm-up
        times = []
        for _ in range(predicts):
            start = time.perf_counter()
            segmenter.predict(images[3])
            times.append(time.perf_counter() - start)
        out["predict_ms"] = 1000 * float(np.median(times))
    return out


def run_column(policy: str, kind: str, args: argparse.Namespace) -> dict[str, float]:
    """One fresh process for one policy and kind of work."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy in ("passive", "active"):
        env["OMP_WAIT_POLICY"] = policy.upper()
    if policy == "spin10k":  # libgomp's default policy with a shorter spin (GOMP_SPINCOUNT, default 300,000)
        env["GOMP_SPINCOUNT"] = "10000"
    env["NAPARI_ALNET_BENCH_FORCED"] = "0" if policy == "engine" else "1"
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import training_speed as t; "
            f"print(json.dumps(t.measure({kind!r}, {args.steps}, {args.predicts}, {args.threads})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{policy}/{kind} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per column")
    parser.add_argument("--predicts", type=int, default=10, help="timed 512² predicts per column")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; torch threads {args.threads}; load average {os.getloadavg()[0]:.1f}")
    print("| policy | OMP_WAIT_POLICY (train / segment) | training steps/s | 512² predict ms |")
    print("| --- | --- | ---: | ---: |")
    for policy in args.policies:
        train = run_column(policy, "train", args)
        infer = run_column(policy, "segment", args)
        print(f"| {policy} | {train['omp_wait_policy']} / {infer['omp_wait_policy']} | {train['steps_per_s']:.2f} | "
              f"{infer['predict_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
