"""The accuracy guard for bf16 and int8: every shipped model in fp32 and in the other precision on its test split.

    python benchmarks/precision_accuracy.py [--precision bf16|int8] [--data ../shared/data]
                                            [--models em fundus dermoscopy] [--json out.json] [--build-int8]

Splits as in ``paper_reproduction.py accuracy``: em on ISBI 2012 slices 21-29 (cell interior = mask 0 inverted),
fundus on the STARE test split (whole image and inside the FOV), dermoscopy on ISIC 2018 val (400). For each
model: pixel label agreement between the two precisions (at the model's threshold), the largest probability
difference, and every metric (accuracy, IoU, Dice, precision, recall of both classes; mean over images) in fp32,
in bf16 and the change. A model whose largest metric change exceeds ``LIMIT`` (0.002) is not validated for bf16, so
``precision="auto"`` keeps it in fp32; int8 must also keep label agreement >= ``MIN_AGREEMENT`` (99.5 %).
``--json`` writes the model-card entries (``benchmarks/model_cards.py --bf16-json/--int8-json`` stores them in the
shipped weight files).

int8: ``--build-int8`` first quantizes each model (``engine.quantized.quantize``) calibrated on its own training
data (``CALIBRATION``: the train splits per ../shared/data/*/PROVENANCE.md, never a test image) and writes
``<model>.int8.onnx`` beside the shipped weights; without it the graph already there is validated. The card entry
records the graph's SHA-256, which is what lets ``Segmenter.load`` use it.

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
from napari_alnet.engine import quantized
from napari_alnet.engine.devices import cpu_bf16_support
from napari_alnet.engine.segmenter import Segmenter
from napari_alnet.io.images import list_images, mask_plane, pair_files, select_split
from napari_alnet.io.pretrained import builtin_path
from napari_alnet.io.stack_reader import read_image
from napari_alnet.training.metrics import segmentation_scores

LIMIT = 0.002
MIN_AGREEMENT = 0.995
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STARE_TEST = ["im0239", "im0240", "im0255", "im0291", "im0319", "im0324"]
#: The fundus model's STARE training images (its card's stage-1 command; DRIVE's 20 training images too).
STARE_TRAIN = ["im0001", "im0002", "im0003", "im0004", "im0005", "im0044", "im0077", "im0081", "im0082", "im0139",
               "im0162", "im0163"]
#: int8 calibration images per model: its own training data, none of the test split.
CALIBRATION = {
    "em": lambda d: [d / "isbi2012" / "train" / "images" / f"{i:02d}.png" for i in range(21)],
    "fundus": lambda d: ([d / "stare" / "images" / f"{n}.png" for n in STARE_TRAIN]
                         + list_images(d / "drive" / "images")),
    "dermoscopy": lambda d: [i for i, _ in select_split(pair_files([d / "isic2018" / "images"],
                                                                   d / "isic2018" / "masks"),
                                                        d / "isic2018" / "split.csv", "train")][:64],
}


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


def build_int8(name: str, data: Path) -> tuple[Path, float]:
    """Quantize a shipped model calibrated on its training data; the graph goes beside its weights."""
    fp32 = load_model(name, device="cpu", precision="fp32")
    start = time.perf_counter()
    images = [read_image(f) for f in CALIBRATION[name](data)]
    path = quantized.quantize(fp32.network, fp32.metadata, images, quantized.graph_path(builtin_path(name)))
    return path, time.perf_counter() - start


def models_for(name: str, precision: str) -> tuple[Segmenter, Segmenter]:
    """(fp32, other) segmenters of a shipped model; int8 runs the graph beside its weights whatever its card says."""
    fp32 = load_model(name, device="cpu", precision="fp32")
    if precision != "int8":
        return fp32, fp32.with_precision(precision)
    graph = quantized.graph_path(builtin_path(name))
    return fp32, Segmenter(fp32.network, fp32.metadata, fp32.source, fp32.device, "int8", None, graph)


def compare(name: str, split: dict, precision: str = "bf16") -> dict:
    """fp32 vs ``precision`` for one model on its split."""
    fp32, other = models_for(name, precision)
    threshold = fp32.threshold
    fovs = {f.stem: f for f in list_images(split["fov"])} if split["fov"] else {}
    per = {"whole": {"fp32": [], precision: []}, **({"fov": {"fp32": [], precision: []}} if fovs else {})}
    agree, max_dp, pixels = 0, 0.0, 0
    seconds = {"fp32": 0.0, precision: 0.0}
    for image_file, mask_file in split["pairs"]:
        image = read_image(image_file)
        truth = (mask_plane(read_image(mask_file)) > 0) != split["invert"]
        probs = {}
        for label, model in (("fp32", fp32), (precision, other)):
            start = time.perf_counter()
            probs[label] = model.predict(image)
            seconds[label] += time.perf_counter() - start
        labels = {k: p > threshold for k, p in probs.items()}
        agree += int((labels["fp32"] == labels[precision]).sum())
        pixels += labels["fp32"].size
        max_dp = max(max_dp, float(np.abs(probs["fp32"] - probs[precision]).max()))
        region = mask_plane(read_image(fovs[image_file.stem])) > 0 if fovs else None
        for label in ("fp32", precision):
            per["whole"][label].append(scores(labels[label], truth, None))
            if fovs:
                per["fov"][label].append(scores(labels[label], truth, region))
    return summarize(split, per, precision, agree / pixels, max_dp, seconds)


def summarize(split: dict, per: dict, precision: str, agreement: float, max_dp: float, seconds: dict) -> dict:
    metrics = {}
    for scope, by in per.items():
        for key in by["fp32"][0]:
            a = float(np.mean([r[key] for r in by["fp32"]]))
            b = float(np.mean([r[key] for r in by[precision]]))
            metrics[f"{scope} {key}"] = {"fp32": round(a, 5), precision: round(b, 5), "change": round(b - a, 5)}
    worst = max(abs(m["change"]) for m in metrics.values())
    validated = worst <= LIMIT and (precision != "int8" or agreement >= MIN_AGREEMENT)
    result = {"split": split["split"], "images": len(split["pairs"]), "label_agreement": round(agreement, 6),
              "max_probability_difference": round(max_dp, 4), "max_metric_change": round(worst, 5),
              "limit": LIMIT, "validated": validated, "metrics": metrics,
              "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    if precision == "int8":
        result["min_label_agreement"] = MIN_AGREEMENT
    return result


def card_entry(result: dict, precision: str = "bf16", name: str | None = None) -> dict:
    """What the model card keeps (``card["bf16"]`` / ``card["int8"]``): the verdict and the figures behind it."""
    keep = ("validated", "split", "images", "label_agreement", "max_probability_difference", "max_metric_change",
            "limit", "min_label_agreement")
    entry = {k: result[k] for k in keep if k in result}
    entry["metric_changes"] = {k: m["change"] for k, m in result["metrics"].items()}
    if precision == "bf16":
        entry["measured"] = (f"benchmarks/precision_accuracy.py, torch {torch.__version__}, {platform.machine()} "
                             f"CPU ({'native' if cpu_bf16_support().native else 'emulated'} bf16)")
        return entry
    import onnxruntime

    graph = quantized.graph_path(builtin_path(name))
    entry["onnx"] = graph.name
    entry["onnx_sha256"] = quantized.sha256_file(graph)
    entry["calibration"] = (f"{len(CALIBRATION[name](DATA))} training images ({name}: see CALIBRATION in "
                            "benchmarks/precision_accuracy.py); static QDQ, MinMax, per-channel uint8 weights, uint8 "
                            "activations; context convolutions fp32")
    entry["measured"] = (f"benchmarks/precision_accuracy.py --precision int8, onnxruntime {onnxruntime.__version__}, "
                         f"torch {torch.__version__}, {platform.machine()} CPU")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", default=["em", "fundus", "dermoscopy"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("bf16", "int8"), default="bf16")
    parser.add_argument("--build-int8", action="store_true", help="quantize each model on its training data first")
    parser.add_argument("--json", type=Path, help="write the model-card entries here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    p = args.precision
    print(f"bf16 on this CPU: {cpu_bf16_support().reason}")
    results = {}
    for name in args.models:
        if p == "int8" and args.build_int8:
            path, seconds = build_int8(name, args.data)
            print(f"{name}: quantized in {seconds:.0f} s -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
        results[name] = r = compare(name, splits(args.data)[name], p)
        print(f"\n### {name}: {r['split']}, label agreement {r['label_agreement'] * 100:.3f} %, max |Δp| "
              f"{r['max_probability_difference']:.4f}, largest metric change {r['max_metric_change']:.4f} → "
              f"{'validated' if r['validated'] else 'NOT validated'} for {p} (limit {LIMIT}"
              f"{', agreement >= 99.5 %' if p == 'int8' else ''}); "
              f"{r['seconds']['fp32']:.0f} s fp32, {r['seconds'][p]:.0f} s {p}\n")
        print(f"| metric | fp32 | {p} | change |\n| --- | ---: | ---: | ---: |")
        for key, m in r["metrics"].items():
            print(f"| {key} | {m['fp32']:.4f} | {m[p]:.4f} | {m['change']:+.4f} |")
    if args.json:
        args.json.write_text(json.dumps({k: card_entry(v, p, k) for k, v in results.items()}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
