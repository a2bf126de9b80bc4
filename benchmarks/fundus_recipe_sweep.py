"""Compare fundus training recipes side by side, each sized to run within 90 minutes on the project's 2-core CPU.

    python benchmarks/fundus_recipe_sweep.py --data ../shared/data --out runs/sweep [--only long_s0 ...]
        [--parallel 7] [--stage-minutes 86 25] [--quick]

Every variant is the two-stage recipe of ``docs/models.md`` (stage 1: STARE train + DRIVE train; stage 2: STARE
train only, lr 1e-3) with one change. Variants run in parallel (one process each, meant for a GPU machine, where
all of them together take minutes); each prints its validation IoU (STARE im0235/im0236) after each stage.
Selection is by validation IoU only; the STARE test images are not read here. ``--quick`` runs 2 x 3 steps per
stage (a smoke test of the driver). ``cpu_steps_equiv`` is the cost in base steps (batch 4, 256 x 256 crops) on
this CPU: a base step takes 0.52 s on two threads, a batch-8 step 0.99 s, a 320-crop step 0.82 s and a
``decoder_stride=1`` step 1.61 s (measured with ``benchmarks/latency.py``-style timing of one Adam step).

Run for ``docs/models.md`` on one NVIDIA H200: all variants but ``ema_*`` with ``--stage-minutes 5.0 1.6``, then
``--only ema_s0 ema_s1 ema_s2 --stage-minutes 3.3 1.1`` (the GPU call's limits; a stage that reaches its budget
stops early and says so in the table). ``aug_s0`` and ``jitter_s0`` (augmentation) ran on the 2-core CPU, one at a
time: ``--only jitter_s0 --stage-minutes 62 25 --threads 2`` made the shipped ``fundus`` model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STARE_TRAIN = ["im0001", "im0002", "im0003", "im0004", "im0005", "im0044", "im0077", "im0081", "im0082", "im0139",
               "im0162", "im0163"]
STARE_VAL = ["im0235", "im0236"]
#: name -> (stage 1 options, stage 2 options, CPU seconds per step on two threads)
VARIANTS: dict[str, tuple[dict, dict, float]] = {
    "base_s0": ({"epochs": 60, "gamma": 0.95}, {"epochs": 20, "gamma": 0.9}, 0.52),
    "long_s0": ({"epochs": 85, "gamma": 0.964}, {"epochs": 25, "gamma": 0.92}, 0.52),
    "long_s1": ({"epochs": 85, "gamma": 0.964, "seed": 1}, {"epochs": 25, "gamma": 0.92, "seed": 1}, 0.52),
    "long_s2": ({"epochs": 85, "gamma": 0.964, "seed": 2}, {"epochs": 25, "gamma": 0.92, "seed": 2}, 0.52),
    "batch8": ({"epochs": 45, "gamma": 0.935, "batch-size": 8}, {"epochs": 15, "gamma": 0.87, "batch-size": 8},
               0.99),
    "crop320": ({"epochs": 55, "gamma": 0.945, "crop": 320}, {"epochs": 15, "gamma": 0.87, "crop": 320}, 0.82),
    "stride1": ({"epochs": 28, "gamma": 0.9, "config-json": '{"decoder_stride": 1}'},
                {"epochs": 8, "gamma": 0.8}, 1.61),
    **{f"ema_s{seed}": ({"epochs": 72, "gamma": 0.964, "ema": 0.999, "seed": seed},
                        {"epochs": 25, "gamma": 0.92, "ema": 0.999, "seed": seed}, 0.53) for seed in range(3)},
    "aug_s0": ({"epochs": 72, "gamma": 0.964, "rotate": True, "zoom": 1.2, "intensity-jitter": 0.2},
               {"epochs": 25, "gamma": 0.92, "rotate": True, "zoom": 1.2, "intensity-jitter": 0.2}, 0.54),
    **{f"jitter_s{seed}": ({"epochs": 72, "gamma": 0.964, "intensity-jitter": 0.2, "seed": seed},
                           {"epochs": 25, "gamma": 0.92, "intensity-jitter": 0.2, "seed": seed}, 0.52)
       for seed in range(2)},
}
COMMON = {"channels": 3, "steps-per-epoch": 80, "crop": 256, "batch-size": 4, "seed": 0, "modality": "fundus"}
STAGE1 = {"lr": 5e-3}
STAGE2 = {"lr": 1e-3}


def _args(options: dict) -> list[str]:
    flags = [f"--{key}" for key, value in options.items() if value is True]
    return flags + [str(x) for key, value in options.items() if value is not True for x in (f"--{key}", value)]


def stage_commands(name: str, data: Path, out: Path, minutes: tuple[float, float], quick: bool) -> list[list[str]]:
    """The two ``alnet train`` command lines of one variant."""
    s1, s2, _ = VARIANTS[name]
    stare, drive = data / "stare", data / "drive"
    train = [str(stare / "images" / f"{n}.png") for n in STARE_TRAIN]
    val = ["--val-images", *[str(stare / "images" / f"{n}.png") for n in STARE_VAL], "--val-masks",
           str(stare / "masks")]
    alnet = [sys.executable, "-m", "napari_alnet.cli", "train"]
    tail = ["--half", "--tune-threshold"]
    quick_opts = {"epochs": 2, "steps-per-epoch": 3} if quick else {}
    first = COMMON | STAGE1 | s1 | {"max-minutes": minutes[0]} | quick_opts
    second = COMMON | STAGE2 | {k: v for k, v in s1.items() if k in ("batch-size", "crop")} | s2 | \
        {"max-minutes": minutes[1]} | quick_opts
    return [
        [*alnet, "--images", *train, str(drive / "images"), "--masks", str(stare / "masks"), str(drive / "masks"),
         *val, *_args(first), *tail, "--out", str(out / f"{name}_stage1.safetensors")],
        [*alnet, "--init", str(out / f"{name}_stage1.safetensors"), "--images", *train, "--masks",
         str(stare / "masks"), *val, *_args(second), *tail, "--out", str(out / f"{name}.safetensors")],
    ]


def cpu_minutes(name: str) -> float:
    """Estimated wall minutes of the variant's steps on the 2-core CPU (validation excluded)."""
    s1, s2, seconds = VARIANTS[name]
    steps = (s1["epochs"] + s2["epochs"]) * COMMON["steps-per-epoch"]
    return steps * seconds / 60


def summarize(name: str, out: Path) -> dict:
    from napari_alnet.io.weights import load_weights

    row: dict = {"variant": name, "cpu_minutes_est": round(cpu_minutes(name), 1)}
    for stage, path in (("stage1", out / f"{name}_stage1.safetensors"), ("stage2", out / f"{name}.safetensors")):
        if not path.is_file():
            row[stage] = "missing"
            continue
        _, meta = load_weights(path)
        training = meta.card.get("training", {})
        row[stage] = {"val": training.get("val_metrics", {}), "best_epoch": training.get("best_epoch"),
                      "epochs_done": training.get("epochs_done"), "steps_done": training.get("steps_done"),
                      "stopped": training.get("stopped"), "wall_s": training.get("wall_seconds"),
                      "threshold": meta.threshold}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs/fundus-sweep"))
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--stage-minutes", nargs=2, type=float, default=(86.0, 25.0),
                        help="wall-clock budget of stage 1 and stage 2 (alnet train --max-minutes)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per variant")
    parser.add_argument("--quick", action="store_true", help="2 epochs x 3 steps per stage (smoke test)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    running = {}
    for name in args.only:
        commands = stage_commands(name, args.data, args.out, tuple(args.stage_minutes), args.quick)
        script = " && ".join(subprocess.list2cmdline([*c, "--threads", str(args.threads)]) for c in commands)
        log = open(args.out / f"{name}.log", "w")  # noqa: SIM115 - closed below
        running[name] = (subprocess.Popen(script, shell=True, stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    for name, (process, log) in running.items():
        if process.wait() != 0:
            failed.append(name)
        log.close()
    rows = [summarize(name, args.out) for name in args.only]
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(f"{len(rows)} variants in {time.perf_counter() - start:.0f} s; failed: {failed or 'none'}")
    print("| variant | CPU min (est.) | stage 1 val IoU (steps) | stage 2 val IoU (steps, stopped) | threshold |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        cells = []
        for stage in ("stage1", "stage2"):
            s = row[stage]
            cells.append("missing" if s == "missing" else
                         f"{s['val'].get('iou', float('nan')):.4f} ({s['steps_done']}, {s['stopped']})")
        threshold = row["stage2"]["threshold"] if row["stage2"] != "missing" else "-"
        print(f"| {row['variant']} | {row['cpu_minutes_est']} | {cells[0]} | {cells[1]} | {threshold} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
