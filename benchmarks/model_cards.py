"""Record the bf16 validation in the shipped models' cards without touching their tensors.

    python benchmarks/model_cards.py --bf16-json bf16.json   # from benchmarks/precision_accuracy.py --json
    python benchmarks/model_cards.py --int8-json int8.json   # from precision_accuracy.py --precision int8 --json
    python benchmarks/model_cards.py --check                 # print each file's tensor-data SHA-256 and bf16 entry
    python benchmarks/model_cards.py --training-statistics [--data ../shared/data]
        # card["training_statistics"]: channels, dtype, p1/p50/p99 of each model's training split (TRAINING_SPLITS)
    python benchmarks/model_cards.py --label-meaning
        # card["foreground"] / card["background"]: what label 1 and label 0 mean (LABEL_MEANINGS)

A safetensors file is an 8-byte header length, a JSON header (tensor offsets and ``__metadata__``) and the tensor
bytes. Only the header's ``__metadata__["card"]`` changes: the tensor bytes are copied verbatim (offsets are
relative to them), and the rewrite is checked — the SHA-256 of the tensor bytes and every tensor are unchanged, and
the file still loads as a napari-alnet weight file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import struct
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from napari_alnet.engine.suitability import STATS_KEY, training_statistics
from napari_alnet.io.atomic import atomic_write
from napari_alnet.io.images import decode_image
from napari_alnet.io.pretrained import builtin_path, shipped_models
from napari_alnet.io.weights import read_weights

ROOT = Path(__file__).resolve().parents[1]
STARE_TRAIN = ("im0001", "im0002", "im0003", "im0004", "im0005", "im0044", "im0077", "im0081", "im0082", "im0139",
               "im0162", "im0163", "im0235", "im0236")
#: Each shipped model's training split, as the datasets' PROVENANCE.md fix them: (images relative to the data folder,
#: colour, pixel size in nm or None, description).
TRAINING_SPLITS = {
    "em": (lambda data: [data / f"isbi2012/train/images/{z:02d}.png" for z in range(21)], False, 4.0,
           "ISBI 2012 train slices 00-20 (4 x 4 nm pixels)"),
    "fundus": (lambda data: [data / f"stare/images/{n}.png" for n in STARE_TRAIN]
               + sorted((data / "drive/images").glob("*.png")), True, None,
               "STARE train (14) + DRIVE training (20)"),
    "dermoscopy": (lambda data: [data / f"isic2018/images/{row['name']}.jpg"
                                 for row in csv.DictReader((data / "isic2018/split.csv").open())
                                 if row["subset_in_source_repo"] == "train"], True, None,
                   "ISIC 2018 Task 1 train (1600, resized to 512 x 512)"),
}

#: What each shipped model's label 1 (``foreground``) and label 0 (``background``) are.
LABEL_MEANINGS = {"em": ("membrane", "cell interior"), "fundus": ("vessel", "background"),
                  "dermoscopy": ("lesion", "skin")}


def split_file(path: Path) -> tuple[dict, bytes]:
    """(header, tensor bytes) of a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def join_file(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + data


def set_card_entry(path: Path, key: str, entry: dict | str) -> str:
    """Set ``card[key] = entry`` in ``path``'s metadata; returns the SHA-256 of its (unchanged) tensor bytes."""
    before = load_file(str(path))
    header, data = split_file(path)
    card = json.loads(header["__metadata__"].get("card", "{}"))
    card[key] = entry
    header["__metadata__"]["card"] = json.dumps(card, sort_keys=True)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(join_file(header, data)))
    _, after_data = split_file(path)
    assert hashlib.sha256(after_data).hexdigest() == digest, f"{path}: tensor bytes changed"
    after = load_file(str(path))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), path
    assert read_weights(path)[1].card[key] == entry, path
    return digest


def write_training_statistics(data: Path) -> None:
    """``card["training_statistics"]`` of each shipped model from its training split (the tensors are untouched)."""
    for name, (paths, rgb, pixel_size, source) in TRAINING_SPLITS.items():
        files = paths(data)
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise SystemExit(f"{name}: {len(missing)} training images missing, e.g. {missing[0]} (--data?)")
        entry = training_statistics((decode_image(p) for p in files), rgb=rgb, pixel_size_nm=pixel_size,
                                    source=source)
        digest = set_card_entry(builtin_path(name), STATS_KEY, entry)
        print(f"{name}: card[{STATS_KEY!r}] = {json.dumps(entry)}; tensor bytes unchanged (sha256 {digest})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16-json", type=Path, help="card entries from precision_accuracy.py --json")
    parser.add_argument("--int8-json", type=Path, help="card entries from precision_accuracy.py --precision int8")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--training-statistics", action="store_true",
                        help="record the intensity statistics of each model's training split in its card")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared datasets")
    parser.add_argument("--label-meaning", action="store_true",
                        help="record what label 1 and label 0 mean (card foreground / background)")
    args = parser.parse_args()
    if args.label_meaning:
        for name, (foreground, background) in LABEL_MEANINGS.items():
            set_card_entry(builtin_path(name), "foreground", foreground)
            digest = set_card_entry(builtin_path(name), "background", background)
            print(f"{name}: label 1 = {foreground!r}, label 0 = {background!r}; tensor bytes unchanged "
                  f"(sha256 {digest})")
    if args.training_statistics:
        write_training_statistics(args.data)
    if args.bf16_json:
        for name, entry in json.loads(args.bf16_json.read_text()).items():
            digest = set_card_entry(builtin_path(name), "bf16", entry)
            print(f"{name}: card['bf16'] = validated {entry['validated']}; tensor bytes unchanged (sha256 {digest})")
    if args.int8_json:
        for name, entry in json.loads(args.int8_json.read_text()).items():
            digest = set_card_entry(builtin_path(name), "int8", entry)
            print(f"{name}: card['int8'] = validated {entry['validated']} ({entry['onnx']} sha256 "
                  f"{entry['onnx_sha256'][:12]}…); tensor bytes unchanged (sha256 {digest})")
    if args.check or not (args.bf16_json or args.int8_json or args.training_statistics or args.label_meaning):
        for name in shipped_models():
            header, data = split_file(builtin_path(name))
            entry = json.loads(header["__metadata__"].get("card", "{}")).get("bf16")
            print(f"{name}: tensor sha256 {hashlib.sha256(data).hexdigest()}; bf16 "
                  f"{json.dumps({k: entry[k] for k in ('validated', 'max_metric_change')}) if entry else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
