"""The accuracy guard for bf16 and int8: every shipped model in fp32 and in the other precision on its test split.

    python benchmarks/precision_accuracy.py [--precision bf16|int8] [--data ../shared/data]
                                            [--models em fundus dermoscopy] [--json out.json] [--build-int8]
    python benchmarks/precision_accuracy.py --finetune-check [--repeats 3]

Splits as in ``paper_reproduction.py accuracy``: em on ISBI 2012 slices 21-29 (cell interior = mask 0 inverted),
fundus on the STARE test split (whole image and inside the FOV), dermoscopy on ISIC 2018 val (400). For each
model: pixel label agreement between the two precisions (at the model's threshold), the largest probability
difference, and every metric (accuracy, IoU, Dice, precision, recall of both classes; mean over images) in fp32,
in bf16 and the change. The guard is ``napari_alnet.training.precision_check`` (what a fine-tune also runs when it
saves a model): a model whose largest metric change exceeds ``LIMIT`` (0.002), or whose label agreement is below
``MIN_AGREEMENT`` (99.5 %), is not validated for that precision, so ``precision="auto"`` keeps it in fp32.
``--json`` writes the model-card entries (``benchmarks/model_cards.py --bf16-json/--int8-json`` stores them in the
shipped weight files).

int8: ``--build-int8`` first quantizes each model (``engine.quantized.quantize``) calibrated on its own training
data (``CALIBRATION``: the train splits per ../shared/data/*/PROVENANCE.md, never a test image) and writes
``<model>.int8.onnx`` beside the shipped weights; without it the graph already there is validated. The card entry
records the graph's SHA-256, which is what lets ``Segmenter.load`` use it.

bf16 runs wherever asked (torch autocast); on a CPU without native bf16 it is emulated (slower), with the same
rounding of inputs and weights to bf16 and fp32 accumulation as native AMX/AVX-512-BF16 kernels.

``--finetune-check``: the seconds ``precision_check.check_finetuned`` adds to the end of a fine-tune (what a fine-tune
runs when it saves a model: bf16 against fp32 on its held-out slice), for the shipped em weights on one 512 x 512
ISBI slice (21); the first call in the process (bf16 kernels not created yet, as at the end of a fine-tune), then
``--repeats`` more.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from napari_alnet import load_model
from napari_alnet.engine import quantized
from napari_alnet.engine.devices import cpu_bf16_support
from napari_alnet.engine.segmenter import Segmenter
from napari_alnet.io.images import list_images, mask_plane, pair_files, select_split
from napari_alnet.io.pretrained import builtin_path
from napari_alnet.io.stack_reader import read_image
from napari_alnet.io.weights import load_weights
from napari_alnet.training import precision_check
from napari_alnet.training.precision_check import LIMIT, MIN_AGREEMENT, GuardImage, GuardSet

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


def guard_images(split: dict) -> Iterator[GuardImage]:
    """A split's images with their truth (and FOV: a second scope), read one at a time."""
    fovs = {f.stem: f for f in list_images(split["fov"])} if split["fov"] else {}
    for image_file, mask_file in split["pairs"]:
        truth = (mask_plane(read_image(mask_file)) > 0) != split["invert"]
        regions = {"whole": None}
        if fovs:
            regions["fov"] = mask_plane(read_image(fovs[image_file.stem])) > 0
        yield GuardImage(read_image(image_file), truth, regions)


def compare(name: str, split: dict, precision: str = "bf16") -> dict:
    """fp32 vs ``precision`` for one model on its split (``training.precision_check.compare``)."""
    fp32, other = models_for(name, precision)
    return precision_check.compare(fp32, other, guard_images(split), split=split["split"])


def card_entry(result: dict, precision: str = "bf16", name: str | None = None) -> dict:
    """What the model card keeps (``card["bf16"]`` / ``card["int8"]``): the verdict and the figures behind it."""
    if precision == "bf16":
        return precision_check.card_entry(result, measured=precision_check.bf16_measured(
            "benchmarks/precision_accuracy.py"))
    import onnxruntime

    graph = quantized.graph_path(builtin_path(name))
    entry = precision_check.card_entry(result, measured=(
        f"benchmarks/precision_accuracy.py --precision int8, onnxruntime {onnxruntime.__version__}, "
        f"torch {torch.__version__}, {platform.machine()} CPU"))
    entry["onnx"] = graph.name
    entry["onnx_sha256"] = quantized.sha256_file(graph)
    entry["calibration"] = (f"{len(CALIBRATION[name](DATA))} training images ({name}: see CALIBRATION in "
                            "benchmarks/precision_accuracy.py); static QDQ, MinMax, per-channel uint8 weights, uint8 "
                            "activations; context convolutions fp32")
    return entry


def time_finetune_check(data: Path, repeats: int) -> None:
    """Seconds of ``check_finetuned`` (the em weights, one held-out 512² ISBI slice): the first call, then more."""
    network, metadata = load_weights(builtin_path("em"))
    image_file, mask_file = splits(data)["em"]["pairs"][0]
    guard = GuardSet(list(guard_images({"pairs": [(image_file, mask_file)], "invert": True, "fov": None})),
                     f"held-out slice {image_file.stem}", {"held_out": [int(image_file.stem)]}, False)
    for call in range(1 + repeats):
        start = time.perf_counter()
        entry = precision_check.check_finetuned(network, metadata, guard)["bf16"]
        seconds = time.perf_counter() - start
        print(f"check_finetuned call {call + 1} ({'first in the process' if not call else 'warm'}): {seconds:.3f} s; "
              f"validated {entry['validated']}, agreement {entry.get('label_agreement')}, largest metric change "
              f"{entry.get('max_metric_change')}{'; ' + entry['skipped'] if 'skipped' in entry else ''}; load "
              f"{Path('/proc/loadavg').read_text().split()[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", default=["em", "fundus", "dermoscopy"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("bf16", "int8"), default="bf16")
    parser.add_argument("--build-int8", action="store_true", help="quantize each model on its training data first")
    parser.add_argument("--json", type=Path, help="write the model-card entries here")
    parser.add_argument("--finetune-check", action="store_true", help="time the check a fine-tune runs at its end")
    parser.add_argument("--repeats", type=int, default=3, help="--finetune-check: calls after the first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    p = args.precision
    print(f"bf16 on this CPU: {cpu_bf16_support().reason}")
    if args.finetune_check:
        time_finetune_check(args.data, args.repeats)
        return
    results = {}
    for name in args.models:
        if p == "int8" and args.build_int8:
            path, seconds = build_int8(name, args.data)
            print(f"{name}: quantized in {seconds:.0f} s -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
        results[name] = r = compare(name, splits(args.data)[name], p)
        print(f"\n### {name}: {r['split']}, label agreement {r['label_agreement'] * 100:.3f} %, max |Δp| "
              f"{r['max_probability_difference']:.4f}, largest metric change {r['max_metric_change']:.4f} → "
              f"{'validated' if r['validated'] else 'NOT validated'} for {p} (limit {LIMIT}, agreement >= "
              f"{MIN_AGREEMENT:.1%}); "
              f"{r['seconds']['fp32']:.0f} s fp32, {r['seconds'][p]:.0f} s {p}\n")
        print(f"| metric | fp32 | {p} | change |\n| --- | ---: | ---: | ---: |")
        for key, m in r["metrics"].items():
            print(f"| {key} | {m['fp32']:.4f} | {m[p]:.4f} | {m['change']:+.4f} |")
    if args.json:
        args.json.write_text(json.dumps({k: card_entry(v, p, k) for k, v in results.items()}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
