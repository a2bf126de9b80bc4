"""``alnet evaluate``: per-image and mean ± std accuracy, IoU and Dice for both classes."""

from __future__ import annotations

import argparse
import json

from ..api import load_model
from ..io.images import pair_files, select_split
from ..training.evaluation import ImageScores, evaluate_job, summarize
from .common import drive, progress_bar
from .segment import check_device

SCORE_KEYS = ("accuracy", "iou", "dice")


def check(args: argparse.Namespace) -> None:
    check_device(args.device)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model, device=args.device)
    bar = progress_bar(args, "evaluate", "images")
    files = pair_files(args.images, args.masks)
    if args.split_csv:
        files = select_split(files, args.split_csv, args.subset)
    job = evaluate_job(model, files, invert=args.invert_masks, fov=args.fov, threshold=args.threshold, tta=args.tta)
    rows = drive(job, bar)
    summary = summarize(rows)
    if args.json:
        print(json.dumps({"images": [{"name": r.name, "foreground": r.foreground.as_dict(),
                                      "background": r.background.as_dict()} for r in rows],
                          "summary": summary}, indent=2))
    else:
        _print_score_table(rows, summary)
    return 0


def _print_score_table(rows: list[ImageScores], summary: dict[str, dict[str, dict[str, float]]]) -> None:
    """One row per image, then mean and std: foreground accuracy, IoU, Dice and background IoU, Dice."""
    keys = SCORE_KEYS
    print(f"{'image':<16}" + "".join(f"{'fg ' + k:>12}" for k in keys) + "".join(f"{'bg ' + k:>12}" for k in keys[1:]))
    for r in rows:
        fg, bg = r.foreground.as_dict(), r.background.as_dict()
        print(f"{r.name:<16}" + "".join(f"{fg[k]:>12.4f}" for k in keys) + "".join(f"{bg[k]:>12.4f}" for k in keys[1:]))
    fg, bg = summary["foreground"], summary["background"]
    for stat in ("mean", "std"):
        print(f"{stat:<16}" + "".join(f"{fg[k][stat]:>12.4f}" for k in keys)
              + "".join(f"{bg[k][stat]:>12.4f}" for k in keys[1:]))
