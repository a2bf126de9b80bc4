"""Our measured figures next to the AL-Net paper's (Tables 3-8); prints Markdown tables.

    python benchmarks/paper_reproduction.py speed                 # Table 3/4/5: params and CPU latency
    python benchmarks/paper_reproduction.py ablation --minutes 8  # Tables 3/4 + baseline: accuracy, same CPU budget
    python benchmarks/paper_reproduction.py accuracy              # Tables 6-8: the shipped models

The paper measured latency on an NVIDIA P100 GPU; we measure on this project's 2-core CPU (2 threads).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from latency import measure
from napari_alnet.model import ALNetConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = {
    "AL-Net (LR-ASPP + A-Decoder)": {},
    "ASPP + A-Decoder (Table 3)": {"context": "aspp"},
    "LR-ASPP + U-Decoder (Table 4)": {"decoder": "unet"},
    "baseline: U-Net decoder, no context": {"context": "none", "decoder": "unet"},
}
PAPER_SPEED = {"AL-Net (LR-ASPP + A-Decoder)": "3.45 M; 34.3 ms (512), 36.2 ms (605x700)",
               "ASPP + A-Decoder (Table 3)": "~1/3 more params; 42.4 ms (512)",
               "LR-ASPP + U-Decoder (Table 4)": "16.5 % slower than A-Decoder (~41 ms, 512)",
               "baseline: U-Net decoder, no context": "3.45 M (Table 5: \"equivalent\" to AL-Net)"}
PAPER_ACCURACY = {"em": (0.9406, 0.8963), "fundus": (0.9728, 0.6851), "dermoscopy": (0.9312, 0.7947)}


def speed() -> None:
    print("| variant | input | params train / fused | GFLOPs fused | CPU ms train / fused | paper (P100 GPU) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, changes in VARIANTS.items():
        for channels, size in ((1, (512, 512)), (3, (605, 700))):
            r = measure(ALNetConfig(in_channels=channels, **changes), size)
            print(f"| {name} | {channels} x {size[0]} x {size[1]} | {r['params_training'] / 1e6:.3f} M / "
                  f"{r['params_fused'] / 1e6:.3f} M | {r['gflops_fused']:.2f} | {r['ms_training']:.0f} / "
                  f"{r['ms_fused']:.0f} | {PAPER_SPEED[name]} |", flush=True)


def ablation(minutes: float, seed: int, only: list[int] | None = None) -> None:
    from napari_alnet import ModelMetadata, load_model
    from napari_alnet.engine.normalization import Normalization
    from napari_alnet.engine.progress import run_job
    from napari_alnet.io.images import pair_files
    from napari_alnet.training import TrainConfig, load_pairs, train
    from napari_alnet.training.evaluation import evaluate_job, summarize

    root = DATA / "isbi2012" / "train"
    files = pair_files([root / "images" / f"{i:02d}.png" for i in range(21)], root / "labels")
    pairs = load_pairs(files, normalization=Normalization(), in_channels=1, invert=True)
    test = pair_files([root / "images" / f"{i:02d}.png" for i in range(21, 30)], root / "labels")
    print(f"ISBI 2012, train 00-17, validate 18-20, test 21-29; {minutes} min CPU budget each, seed {seed}")
    print("| variant | steps | interior acc | interior IoU | membrane IoU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    tmp = Path(tempfile.mkdtemp())
    for number, (name, changes) in enumerate(VARIANTS.items(), 1):
        if only and number not in only:
            continue
        meta = ModelMetadata(config=ALNetConfig(**changes), modality="em", objects="background")
        out = tmp / f"{len(changes)}{changes.get('context', '')}.safetensors"
        result = train(pairs[:18], pairs[18:], meta, out, config=TrainConfig(epochs=1000, steps_per_epoch=40,
                                                                              max_minutes=minutes, seed=seed))
        model = load_model(out, device="cpu")
        s = summarize(run_job(evaluate_job(model, test, invert=True)))
        print(f"| {name} | {result.steps_done} | {s['background']['accuracy']['mean']:.4f} | "
              f"{s['background']['iou']['mean']:.4f} | {s['foreground']['iou']['mean']:.4f} |", flush=True)


def accuracy() -> None:
    from napari_alnet import load_model
    from napari_alnet.engine.progress import run_job
    from napari_alnet.io.images import pair_files, select_split
    from napari_alnet.io.pretrained import shipped_models
    from napari_alnet.training.evaluation import evaluate_job, summarize

    print("| dataset (model) | split | class | our Acc | our IoU | paper Acc | paper IoU |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    isbi = DATA / "isbi2012" / "train"
    stare_test = ["im0239", "im0240", "im0255", "im0291", "im0319", "im0324"]
    isic = DATA / "isic2018"
    jobs = {
        "em": [("21-29", "cell interior", dict(invert=True), "background",
                pair_files([isbi / "images" / f"{i:02d}.png" for i in range(21, 30)], isbi / "labels"))],
        "fundus": [(f"STARE test ({scope})", "vessel", dict(fov=DATA / "stare" / "fov") if scope == "FOV" else {},
                    "foreground", pair_files([DATA / "stare" / "images" / f"{n}.png" for n in stare_test],
                                             DATA / "stare" / "masks")) for scope in ("whole image", "FOV")],
        "dermoscopy": [("ISIC val (400)", "lesion", {}, "foreground",
                        select_split(pair_files([isic / "images"], isic / "masks"), isic / "split.csv", "val"))],
    }
    for name, runs in jobs.items():
        if name not in shipped_models():
            print(f"| {name} | — | — | not shipped | | {PAPER_ACCURACY[name][0]} | {PAPER_ACCURACY[name][1]} |")
            continue
        model = load_model(name, device="cpu")
        for split, cls, kw, key, files in runs:
            s = summarize(run_job(evaluate_job(model, files, **kw)))[key]
            print(f"| {name} | {split} | {cls} | {s['accuracy']['mean']:.4f} ± {s['accuracy']['std']:.4f} | "
                  f"{s['iou']['mean']:.4f} ± {s['iou']['std']:.4f} | {PAPER_ACCURACY[name][0]} | "
                  f"{PAPER_ACCURACY[name][1]} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("speed", "ablation", "accuracy"))
    parser.add_argument("--minutes", type=float, default=8.0, help="CPU budget per ablation variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", type=int, nargs="+", help="ablation: run only these variants (1-based)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    parts = {"speed": speed, "ablation": lambda: ablation(args.minutes, args.seed, args.only), "accuracy": accuracy}
    parts[args.part]()


if __name__ == "__main__":
    main()
