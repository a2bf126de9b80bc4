"""The accuracy guard for bf16: every shipped model in fp32 and in bf16 on its test split, side by side.

    python benchmarks/precision_accuracy.py [--data ../shared/data] [--models em fundus dermoscopy] [--json out.json]

Splits as in ``paper_reproduction.py accuracy``: em on ISBI 2012 slices 21-29 (cell interior = mask 0 inverted),
fundus on the STARE test split (whole image and inside the FOV), dermoscopy on ISIC 2018 val (400). For each
model: pixel label agreement between the two precisions (at the model's threshold), the largest probability
difference, and every metric (accuracy, IoU, Dice, precision, recall of both classes; mean over images) in fp32,
in bf16 and the change. A model whose largest metric change exceeds ``LIMIT`` (0.002) is not validated for bf16, so
``precision="auto"`` keeps it in fp32. ``--json`` writes the model-card entries (``benchmarks/model_cards.py
--bf16-json`` stores them in the shipped weight files).

bf16 runs wherever asked (torch autocast); on a CPU without native bf16 it is emulated (slower), with the same
rounding of inputs and weights to bf16 and fp32 accumulation as native AMX/AVX-512-BF16 kernels.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_alnet import load_model
from napari_alnet.engine.devices import cpu_bf16_support
from napari_alnet.io.images import list_images, mask_plane, pair_files, select_split
from napari_alnet.io.stack_reader import read_image
from napari_alnet.training.metrics import segmentation_scores

LIMIT = 0.002
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STARE_TEST = ["im0239", "im0240", "im0255", "im0291", "im0319", "im0324"]


def splits(data: Path) -> dict[str, dict]:
    """Per model: the (image, mask) pairs of its test split, mask inversion, FOV folder, split name."""
    isbi, isic = data / "isbi2012" / "train", data / "isic2018"
    return {
        "em": {"pairs": pair_files([isbi / "images" / f"{i:02d}.png" for i in range(21, 30)], isbi / "labels"),
               "invert": True, "fov": None, "split": "ISBI 2012 slices 21-29"},
        "fundus": {"pairs": pair_files([data / "stare" / "images" / f"{n}.png" for n in STARE_TEST],
                                       data / "stare" / "masks"),
                   "invert": False, "fov": data / "stare" / "fov", "split": "STARE test (6)"},
        "dermoscopy": {"pairs": select_split(pair_files([isic / "images"], isic / "masks"), isic / "split.csv", "val"),
                       "invert": False, "fov": None, "split": "ISIC 2018 val (400)"},
    }


def scores(pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None) -> dict[str, float]:
    fg = segmentation_scores(pred, truth, region).as_dict()
    bg = segmentation_scores(~pred, ~truth, region).as_dict()
    return {f"fg {k}": v for k, v in fg.items()} | {f"bg {k}": v for k, v in bg.items()}


def compare(name: str, split: dict) -> dict:
    """fp32 vs bf16 for one model on its split."""
    fp32 = load_model(name, device="cpu", precision="fp32")
    bf16 = fp32.with_precision("bf16")
    threshold = fp32.threshold
    fovs = {f.stem: f for f in list_images(split["fov"])} if split["fov"] else {}
    per = {"whole": {"fp32": [], "bf16": []}, **({"fov": {"fp32": [], "bf16": []}} if fovs else {})}
    agree, max_dp, pixels = 0, 0.0, 0
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for image_file, mask_file in split["pairs"]:
        image = read_image(image_file)
        truth = (mask_plane(read_image(mask_file)) > 0) != split["invert"]
        probs = {}
        for label, model in (("fp32", fp32), ("bf16", bf16)):
            start = time.perf_counter()
            probs[label] = model.predict(image)
            seconds[label] += time.perf_counter() - start
        labels = {k: p > threshold for k, p in probs.items()}
        agree += int((labels["fp32"] == labels["bf16"]).sum())
        pixels += labels["fp32"].size
        max_dp = max(max_dp, float(np.abs(probs["fp32"] - probs["bf16"]).max()))
        region = mask_plane(read_image(fovs[image_file.stem])) > 0 if fovs else None
        for label in ("fp32", "bf16"):
            per["whole"][label].append(scores(labels[label], truth, None))
            if fovs:
                per["fov"][label].append(scores(labels[label], truth, region))
    metrics = {}
    for scope, by in per.items():
        for key in by["fp32"][0]:
            a = float(np.mean([r[key] for r in by["fp32"]]))
            b = float(np.mean([r[key] for r in by["bf16"]]))
            metrics[f"{scope} {key}"] = {"fp32": round(a, 5), "bf16": round(b, 5), "change": round(b - a, 5)}
    worst = max(abs(m["change"]) for m in metrics.values())
    return {"split": split["split"], "images": len(split["pairs"]), "label_agreement": round(agree / pixels, 6),
            "max_probability_difference": round(max_dp, 4), "max_metric_change": round(worst, 5),
            "limit": LIMIT, "validated": worst <= LIMIT, "metrics": metrics,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def card_entry(result: dict) -> dict:
    """What the model card keeps (``card["bf16"]``): the verdict and the figures behind it."""
    keep = ("validated", "split", "images", "label_agreement", "max_probability_difference", "max_metric_change",
            "limit")
    entry = {k: result[k] for k in keep}
    entry["metric_changes"] = {k: m["change"] for k, m in result["metrics"].items()}
    entry["measured"] = (f"benchmarks/precision_accuracy.py, torch {torch.__version__}, {platform.machine()} CPU "
                         f"({'native' if cpu_bf16_support().native else 'emulated'} bf16)")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", default=["em", "fundus", "dermoscopy"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the model-card entries here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"bf16 on this CPU: {cpu_bf16_support().reason}")
    results = {}
    for name in args.models:
        results[name] = r = compare(name, splits(args.data)[name])
        print(f"\n### {name}: {r['split']}, label agreement {r['label_agreement'] * 100:.3f} %, max |Δp| "
              f"{r['max_probability_difference']:.4f}, largest metric change {r['max_metric_change']:.4f} → "
              f"{'validated' if r['validated'] else 'NOT validated'} for bf16 (limit {LIMIT}); "
              f"{r['seconds']['fp32']:.0f} s fp32, {r['seconds']['bf16']:.0f} s bf16\n")
        print("| metric | fp32 | bf16 | change |\n| --- | ---: | ---: | ---: |")
        for key, m in r["metrics"].items():
            print(f"| {key} | {m['fp32']:.4f} | {m['bf16']:.4f} | {m['change']:+.4f} |")
    if args.json:
        args.json.write_text(json.dumps({k: card_entry(v) for k, v in results.items()}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
