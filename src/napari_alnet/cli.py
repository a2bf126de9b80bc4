"""The ``alnet`` command line: demo, segment, train, evaluate, export."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from skimage.io import imsave

from .api import Segmenter, load_model
from .engine.batch import BatchSummary, segment_files_job
from .engine.blockwise import VolumeSummary, segment_volume_job, volume_routes
from .engine.devices import resolve_device
from .engine.export import FORMATS, export_job
from .engine.postprocess import instance_labels
from .engine.progress import Job, Progress, run_job
from .engine.tiling import check_tile
from .io.atomic import remove_stale_parts
from .io.images import pair_files, select_split
from .io.pretrained import shipped_models
from .io.sample_data import em_like_stack
from .io.stack_reader import PixelSize, open_slices
from .io.stack_writer import TiffStackWriter
from .io.weights import load_weights, save_weights
from .model import ALNet, ALNetConfig
from .model.metadata import ModelMetadata, Normalization, check_threshold
from .terminal import ProgressBar
from .training import Pair, TrainConfig, TrainResult, load_pairs, train_job
from .training.evaluation import ImageScores, evaluate_job, summarize
from .training.loop import tune_threshold
from .training.metrics import segmentation_scores

T = TypeVar("T")

DEVICE_HELP = "auto (default: CUDA > MPS > CPU), cuda, mps or cpu"
SCORE_KEYS = ("accuracy", "iou", "dice")


def _run(job: Job[T], bar: ProgressBar, on_progress=None) -> T:
    """Drive ``job`` with ``bar`` (or ``on_progress``) showing its reports; the job and the bar are closed after."""
    try:
        return run_job(job, on_progress or bar)
    finally:
        job.close()
        bar.close()


# --- alnet demo ---------------------------------------------------------------------------------------------------

def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    cells = max(8, round(240 * (args.size / 512) ** 2))
    stack, truth = em_like_stack(depth=args.slices, size=args.size, cells=cells)
    source = _write_demo_stack(out / "em_like_stack.tif", stack)
    model, what = _demo_model(args.device)
    job = segment_files_job([source], out, model, overwrite=True, device=args.device)
    summary = _run(job, ProgressBar("demo", "slices"))
    if summary.failures:
        raise ValueError(summary.failures[0][1])
    labels_path = out / "em_like_stack_labels.tif"
    with open_slices(labels_path) as reader:
        labels = np.stack([reader[z] for z in range(len(reader))]).astype(bool)
    mid = len(stack) // 2
    objects = model.metadata.objects
    found = int(instance_labels(labels[mid].astype(np.float32), 0.5, objects).max())
    dice = segmentation_scores(labels, truth).dice
    overlay_path = _write_overlay(out / "em_like_stack_overlay.png", stack[mid], labels[mid])
    seg = summary.seconds
    print(f"segmented a generated EM-like stack {stack.shape} (Z, Y, X) with {what} on {summary.device}: "
          f"{seg:.2f} s ({seg / len(stack) * 1000:.0f} ms/slice), {time.perf_counter() - start:.2f} s in all")
    print(f"membrane pixels {labels.mean():.3f} (truth {truth.mean():.3f}), membrane Dice vs the generated truth "
          f"{dice:.3f}; slice {mid}: {found} {'cells' if objects == 'background' else 'objects'} "
          f"(the stack has {cells})")
    print(f"wrote {source}\n      {labels_path}  (uint8 labels, 1 = membrane)\n      {overlay_path}  "
          f"(slice {mid}, membranes in red)")
    return 0


def _write_demo_stack(path: Path, stack: np.ndarray) -> Path:
    pixel_size = PixelSize(x=0.004, y=0.004, z=0.05, unit="um")
    with TiffStackWriter(path, stack.shape, stack.dtype, pixel_size=pixel_size) as writer:
        for plane in stack:
            writer.write(plane)
        writer.finish()
    return path


def _demo_model(device: str | None) -> tuple[Segmenter, str]:
    """The shipped ``em`` model, or an untrained network where this install ships none, and how to call it."""
    if "em" in shipped_models():
        return load_model("em", device=device), "the shipped 'em' model"
    return Segmenter.from_network(ALNet()), "an UNTRAINED AL-Net (no 'em' weights are shipped in this install)"


def _write_overlay(path: Path, plane: np.ndarray, labels: np.ndarray) -> Path:
    """``plane`` in gray with the labelled pixels tinted red, as an RGB PNG."""
    overlay = np.repeat(plane[..., None], 3, axis=-1).astype(np.float32)
    overlay[labels] = 0.5 * overlay[labels] + 0.5 * np.array([255, 40, 40], np.float32)
    imsave(path, overlay.astype(np.uint8), check_contrast=False)
    return path


# --- alnet segment ------------------------------------------------------------------------------------------------

def _check_watershed(args: argparse.Namespace, volumes: list[str] | None) -> None:
    """--watershed needs --instances; --watershed-halo needs --watershed and, once the inputs are routed
    (``volumes``), an OME-Zarr output (TIFF outputs are split slice by slice, whole)."""
    if args.watershed and not args.instances:
        raise ValueError("--watershed splits instances: give it with --instances 2d or --instances 3d")
    if args.watershed_halo is not None and volumes is not None:
        if not args.watershed:
            raise ValueError("--watershed-halo is the context of the blockwise watershed: give it with --watershed")
        if not volumes:
            raise ValueError("--watershed-halo applies to OME-Zarr outputs (Zarr/N5 inputs, -o ending in .zarr, "
                             "--instances 3d); TIFF outputs are split slice by slice, each slice whole")


def _segment(args: argparse.Namespace) -> int:
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # unreadable files get our one-line error instead
    _check_watershed(args, None)  # before loading the model
    model = load_model(args.model, device=args.device, precision=args.precision)
    volume_options = any(v is not None for v in (args.block, args.workers, args.scheduler, args.threads))
    volumes, args.inputs = volume_routes(args.inputs, args.out, args.instances, volume_options)
    _check_watershed(args, volumes)
    if volumes and (args.axes or args.series is not None):
        raise ValueError(f"{volumes[0]}: --axes and --series apply to TIFF inputs written as TIFF outputs; a Zarr "
                         "volume says its axes in its metadata, and a TIFF stack for -o *.zarr must read as Z, Y, X")
    if volumes:
        code = _segment_volumes(args, model, volumes)
        if code or not args.inputs:
            return code
    removed = remove_stale_parts(Path(args.out))
    if removed:
        print(f"alnet segment: removed {len(removed)} temporary file(s) left by an earlier interrupted run: "
              + ", ".join(p.name for p in removed), file=sys.stderr)
    bar = ProgressBar("segment", "slices")

    def report(progress: Progress) -> None:
        failure = progress.metrics.get("failure")
        if failure:
            bar.write(f"alnet segment: error: {failure[1]}")
        bar(progress)

    job = segment_files_job(args.inputs, args.out, model, tile=args.tile, threshold=args.threshold,
                            probabilities=args.probabilities, instances=bool(args.instances), overwrite=args.overwrite,
                            axes=args.axes, series=args.series, watershed=args.watershed)
    try:
        summary = _run(job, bar, report)
    except KeyboardInterrupt as exc:
        print("alnet segment: interrupted; outputs written so far are complete, no partial file was left",
              file=sys.stderr)
        return interrupted_exit_code(exc)
    return _segment_report(summary, args.out)


def _segment_volumes(args: argparse.Namespace, model: Segmenter, sources: list[str]) -> int:
    """Zarr/N5 inputs (or any, to an -o *.zarr): blockwise into OME-Zarr, resumable (see docs/volumes.md)."""
    for source in sources:
        job = segment_volume_job(model, source, args.out, block=args.block, probabilities=args.probabilities,
                                 instances=args.instances, threshold=args.threshold, overwrite=args.overwrite,
                                 tile=args.tile, workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                                 **_watershed_options(args))
        try:
            summary = _run(job, ProgressBar("segment", "slices"))
        except KeyboardInterrupt as exc:
            print("alnet segment: interrupted; finished blocks are kept: run the same command again to continue",
                  file=sys.stderr)
            return interrupted_exit_code(exc)
        _volume_report(summary)
    return 0


def _watershed_options(args: argparse.Namespace) -> dict:
    """The engine's watershed options from --watershed / --watershed-halo (none when off: the engine's defaults)."""
    if not args.watershed:
        return {}
    return {"watershed": True} | ({"watershed_halo": args.watershed_halo} if args.watershed_halo is not None else {})


def _volume_report(summary: VolumeSummary) -> None:
    objects = f", {summary.objects} objects" if summary.objects is not None else ""
    print(f"segmented {summary.shape} in {summary.blocks} blocks of {summary.block} ({summary.blocks_run} now, "
          f"{summary.blocks_resumed} done before) in {summary.seconds:.1f} s ({summary.slices_per_second:.2f} "
          f"slices/s) on {summary.device}, {summary.workers}{objects}; wrote {summary.labels} ({summary.dtype})"
          + (f" and {summary.probabilities}" if summary.probabilities else ""))


def _segment_report(summary: BatchSummary, out: str) -> int:
    rate = summary.slices / summary.seconds if summary.seconds else 0.0
    print(f"segmented {summary.slices} slices into {len(summary.written)} files in {summary.seconds:.1f} s "
          f"({rate:.2f} slices/s) on {summary.device} ({summary.precision}); output folder {out}")
    if summary.skipped:
        print(f"kept {len(summary.skipped)} existing outputs (--overwrite replaces them): "
              + ", ".join(p.name for p in summary.skipped))
    if summary.failures:
        print(f"{len(summary.failures)} input(s) failed:", file=sys.stderr)
        for _path, message in summary.failures:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


# --- alnet train --------------------------------------------------------------------------------------------------

def _train(args: argparse.Namespace) -> int:
    norm = Normalization(kind=args.normalization)
    config = _network_config(args)
    pairs, val = _training_pairs(args, norm)
    meta = _new_metadata(args, config, norm)
    recipe = _recipe(args)
    print(f"training on {len(pairs)} pairs, validating on {len(val)}; "
          f"{recipe.resolved_steps(pairs)} steps/epoch x {recipe.epochs} epochs", file=sys.stderr)
    started = time.time()
    job = train_job(pairs, val, meta, out=args.out, config=recipe, init=args.init, checkpoint=args.checkpoint,
                    resume=args.resume)
    try:
        result = _run(job, ProgressBar("train", "steps"))
    except KeyboardInterrupt as exc:
        out = Path(args.out)
        saved = out.is_file() and out.stat().st_mtime >= started
        print("interrupted; " + (f"the best weights so far are in {out}" if saved else
                                 f"no weights were saved yet (nothing was written to {out})"), file=sys.stderr)
        return interrupted_exit_code(exc)
    _finish_weights(args, result, val)
    if result.stopped == "budget":
        total = recipe.resolved_steps(pairs) * recipe.epochs
        print(f"stopped at the --max-minutes budget after {result.steps_done} of {total} steps "
              f"({result.epochs_done} of {recipe.epochs} epochs): the run did not finish", file=sys.stderr)
    print(f"best epoch {result.best_epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
          + f"; {result.wall_seconds / 60:.1f} min; wrote {result.out}")
    return 0


def _network_config(args: argparse.Namespace) -> ALNetConfig:
    """The network to train: ``--config-json`` (with ``--channels``) or the shipped architecture."""
    config = (ALNetConfig.from_json(args.config_json).replace(in_channels=args.channels) if args.config_json
              else ALNetConfig(in_channels=args.channels))
    if args.init and args.config_json:
        raise ValueError("--config-json describes a new network; --init takes the network of its weight file")
    return config


def _check_train_outputs(args: argparse.Namespace, inputs: Sequence[tuple[Path, Path]]) -> None:
    """``--out`` (and its checkpoint) must be a new ``.safetensors`` path that is none of the inputs; an existing
    one is replaced only with ``--overwrite`` (or continued with ``--resume``)."""
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: weight files are written as .safetensors; give a path ending in .safetensors")
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    used = {p.resolve() for pair in inputs for p in pair}
    for path in (out, checkpoint):
        if path.resolve() in used:
            raise ValueError(f"{path}: is one of the training or validation inputs; refusing to write over it")
        if path.is_dir():
            raise ValueError(f"{path}: is a folder; give a file path")
    if not (args.overwrite or args.resume):
        for path in (out, checkpoint):
            if path.exists():
                raise ValueError(f"{path}: exists; use --overwrite to replace it (or --resume to continue its run)")


def _training_pairs(args: argparse.Namespace, norm: Normalization) -> tuple[list[Pair], list[Pair]]:
    """Training and validation pairs: ``--val-images``, else the last ``--holdout`` training pairs, else none."""
    files = pair_files(args.images, args.masks)
    val_files = pair_files(args.val_images, args.val_masks or args.masks) if args.val_images else []
    if args.resize and args.scale != 1:
        raise ValueError("give --resize or --scale, not both")
    _check_train_outputs(args, [*files, *val_files])
    if args.split_csv:
        files = select_split(files, args.split_csv, args.subset)
    pairs = _load_pairs(files, args, norm)
    if args.val_images:
        val = _load_pairs(val_files, args, norm)
    elif args.holdout:
        pairs, val = pairs[: -args.holdout], pairs[-args.holdout:]
    else:
        val = []
    if not pairs:
        raise ValueError("no training pairs left after holding out validation pairs")
    return pairs, val


def _load_pairs(files: Sequence[tuple[Path, Path]], args: argparse.Namespace, norm: Normalization) -> list[Pair]:
    return load_pairs(files, normalization=norm, in_channels=args.channels, invert=args.invert_masks,
                      resize=args.resize, scale=args.scale)


def _new_metadata(args: argparse.Namespace, config: ALNetConfig, norm: Normalization) -> ModelMetadata:
    return ModelMetadata(config=config, modality=args.modality, normalization=norm, threshold=0.5,
                         objects=args.objects, card={"summary": args.summary} if args.summary else {},
                         input_size=(args.resize, args.resize) if args.resize else None, input_scale=args.scale)


def _recipe(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, lr=args.lr, gamma=args.gamma, batch_size=args.batch_size,
                       crop=args.crop, steps_per_epoch=args.steps_per_epoch, seed=args.seed,
                       max_minutes=args.max_minutes, device=args.device, threads=args.threads,
                       ema_decay=args.ema, rotate=args.rotate, zoom=args.zoom,
                       intensity_jitter=args.intensity_jitter)


def _finish_weights(args: argparse.Namespace, result: TrainResult, val: list[Pair]) -> None:
    """Rewrite the best weights with the tuned threshold (``--tune-threshold``), the training record in the model
    card, and in float16 with ``--half``."""
    model, saved = load_weights(result.out)
    if args.tune_threshold and val:
        saved.threshold, tuned = tune_threshold(model, val)
        print(f"threshold tuned on the validation pairs: {saved.threshold:.2f} (IoU {tuned:.4f})", file=sys.stderr)
    card = dict(saved.card)
    card["training"] = dict(card.get("training", {})) | {
        "command": "alnet " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("alnet") else None,
        "wall_seconds": round(result.wall_seconds, 1), "epochs_done": result.epochs_done,
        "steps_done": result.steps_done, "stopped": result.stopped, "history": result.history}
    saved.card = card
    save_weights(model, saved, result.out, half=args.half)


# --- alnet evaluate -----------------------------------------------------------------------------------------------

def _evaluate(args: argparse.Namespace) -> int:
    model = load_model(args.model, device=args.device)
    bar = ProgressBar("evaluate", "images")
    files = pair_files(args.images, args.masks)
    if args.split_csv:
        files = select_split(files, args.split_csv, args.subset)
    job = evaluate_job(model, files, invert=args.invert_masks, fov=args.fov, threshold=args.threshold, tta=args.tta)
    rows = _run(job, bar)
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


# --- alnet export -------------------------------------------------------------------------------------------------

def _export(args: argparse.Namespace) -> int:
    job = export_job(args.model, args.out, args.format, sample=args.sample, overwrite=args.overwrite,
                     name=args.name, authors=args.author)
    try:
        report = _run(job, ProgressBar("export", "steps"))
    except KeyboardInterrupt as exc:
        print("alnet export: interrupted; nothing was written", file=sys.stderr)
        return interrupted_exit_code(exc)
    print(report.summary())
    return 0


# --- the parser ---------------------------------------------------------------------------------------------------

def _threshold(text: str) -> float:
    try:
        return check_threshold(float(text), "--threshold")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _device(text: str) -> str:
    """A device that exists here (checked when the command line is read, not after loading a model)."""
    try:
        resolve_device(text)
    except (ValueError, RuntimeError) as exc:
        raise argparse.ArgumentTypeError(f"{exc}; choose {DEVICE_HELP}") from None
    return text


def _axes(text: str) -> str:
    """Axis letters for ``--axes``: unique letters with exactly one Y and one X."""
    axes = text.strip().upper()
    if not axes.isalpha() or len(set(axes)) != len(axes) or axes.count("Y") != 1 or axes.count("X") != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected unique axis letters with one Y and one X, e.g. ZYX")
    return axes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _tile_size(text: str) -> int:
    try:
        return check_tile(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="segment a generated EM-like stack with the shipped model")
    demo.add_argument("-o", "--out", default="alnet-demo", help="output folder (default ./alnet-demo)")
    demo.add_argument("--slices", type=int, default=3)
    demo.add_argument("--size", type=int, default=512, help="slice width and height in pixels")
    demo.add_argument("--device", type=_device, default=None, help=DEVICE_HELP)
    demo.set_defaults(func=_demo)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("segment", help="segment images and TIFF stacks into label (and probability) TIFFs",
                         description="For each input STEM.ext write OUTDIR/STEM_labels.tif (and STEM_prob.tif). "
                         "Stacks are streamed slice by slice. Exit code 1 if any input failed. Zarr/N5 inputs, "
                         "-o ending in .zarr and --instances 3d write OME-Zarr (STEM_labels.zarr, STEM_prob.zarr) "
                         "blockwise and resumably: see docs/volumes.md.")
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="TIFF/OME-TIFF stacks, PNG/JPEG images, or folders")
    seg.add_argument("-o", "--out", required=True, metavar="OUTDIR")
    seg.add_argument("--model", default="em", help="em | fundus | dermoscopy | weight file (default em)")
    seg.add_argument("--device", type=_device, default=None, help=DEVICE_HELP)
    seg.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                     help="auto (default): bf16 on a CPU with native bf16 for models validated in bf16, fp16 on "
                     "CUDA, else fp32; fp16 needs CUDA (docs/performance.md)")
    seg.add_argument("--tile", type=_tile_size, default=None,
                     help="tile size (multiple of 32, >= 544); default: whole slices up to 2048 x 2048")
    seg.add_argument("--threshold", type=_threshold, default=None, help="in (0, 1); default: the model's")
    seg.add_argument("--probabilities", action="store_true", help="also write STEM_prob.tif (float32)")
    seg.add_argument("--instances", nargs="?", const="2d", choices=("2d", "3d"), default=None,
                     help="label objects (EM: the cells between membranes) instead of the mask: 2d (plain "
                     "--instances) per slice, int32 TIFF; 3d in 3D, consistent across blocks, OME-Zarr")
    seg.add_argument("--watershed", action="store_true",
                     help="with --instances: split touching objects at the ridges of their distance transform "
                     "(seeded by its maxima; in 3D for --instances 3d, using the voxel size; docs/volumes.md)")
    seg.add_argument("--watershed-halo", type=_positive, default=None, metavar="VOXELS",
                     help="OME-Zarr outputs: context of each block's watershed, in voxels of the finest axis "
                     "(default 16); exact across blocks for objects at most this long on each axis")
    seg.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                     help="OME-Zarr outputs: block shape (default: whole planes, or ~1536 px YX tiles for planes "
                     "over 2048 x 2048)")
    seg.add_argument("--workers", type=int, default=None, metavar="N",
                     help="OME-Zarr outputs: run on a local Dask cluster of N worker processes")
    seg.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="OME-Zarr outputs: run on an existing Dask cluster (e.g. dask-jobqueue), tcp://host:port")
    seg.add_argument("--threads", type=int, default=None, metavar="T",
                     help="OME-Zarr outputs: torch threads per worker (default: the cores / workers)")
    seg.add_argument("--axes", type=_axes, default=None, metavar="AXES",
                     help="how TIFF inputs' axes read, one letter per axis, e.g. ZYX for a stack tifffile marks as "
                          "channels (C or S = colour; any letter but Y, X, C, S = the stack axis)")
    seg.add_argument("--series", type=int, default=None, metavar="K",
                     help="which series of a multi-series TIFF to segment (0-based; refused without it)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs never)")
    seg.set_defaults(func=_segment)


def _add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train AL-Net (the paper's recipe by default) and write a weight file")
    _add_train_data(tr)
    _add_train_recipe(tr)
    _add_train_model(tr)
    tr.set_defaults(func=_train)


def _add_train_data(tr: argparse.ArgumentParser) -> None:
    """What to train and validate on (and ``--init``, the weights to start from)."""
    tr.add_argument("--images", nargs="+", required=True, help="image files, folders or TIFF stacks")
    tr.add_argument("--masks", nargs="+", required=True,
                    help="mask folder(s) (paired by file stem) or one mask file/stack for one image")
    tr.add_argument("--split-csv", help="a name,subset CSV: train only on images of --subset")
    tr.add_argument("--subset", default="train")
    tr.add_argument("--resize", type=int, default=0,
                    help="train at a reduced resolution: images resized to RESIZE x RESIZE (stored in the model)")
    tr.add_argument("--scale", type=float, default=1.0,
                    help="train on images zoomed by SCALE (stored in the model; inference and fine-tuning "
                         "zoom the same way)")
    tr.add_argument("--tune-threshold", action="store_true",
                    help="store the threshold that maximizes validation IoU instead of 0.5")
    tr.add_argument("--val-images", nargs="+", help="validation images (default: --holdout)")
    tr.add_argument("--val-masks", nargs="+", help="validation mask folder(s) (default: --masks)")
    tr.add_argument("--holdout", type=int, default=0, help="hold out the last N training pairs for validation")
    tr.add_argument("--init", help="start from a built-in model name or weight file (fine-tuning)")
    tr.add_argument("--invert-masks", action="store_true", help="foreground is mask == 0 (ISBI membranes)")


def _add_train_recipe(tr: argparse.ArgumentParser) -> None:
    """The optimisation recipe and augmentation (``TrainConfig``)."""
    tr.add_argument("--epochs", type=int, default=150)
    tr.add_argument("--lr", type=float, default=5e-3)
    tr.add_argument("--gamma", type=float, default=0.95, help="ExponentialLR decay per epoch")
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--crop", type=int, default=256)
    tr.add_argument("--steps-per-epoch", type=int, default=0, help="0 = about one pass over the pixels")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget; stops cleanly, keeps best")
    tr.add_argument("--device", type=_device, default=None, help=DEVICE_HELP)
    tr.add_argument("--threads", type=int, default=0)
    tr.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                    help="validate and save an exponential moving average of the weights (e.g. 0.999; default off)")
    tr.add_argument("--rotate", action="store_true", help="augment: rotate each crop by a random angle")
    tr.add_argument("--zoom", type=float, default=1.0,
                    help="augment: zoom each crop by a factor drawn from [1/ZOOM, ZOOM] (default 1 = off)")
    tr.add_argument("--intensity-jitter", type=float, default=0.0, metavar="J",
                    help="augment: contrast x exp(±J), per-channel gain x exp(±J/2), shift ±J (default 0 = off)")


def _add_train_model(tr: argparse.ArgumentParser) -> None:
    """The network, the metadata stored with it, and where it is written."""
    tr.add_argument("--channels", type=int, choices=(1, 3), default=1)
    tr.add_argument("--config-json", help="ALNetConfig fields as JSON, e.g. '{\"decoder_stride\": 1}' "
                    "(default: the shipped architecture)")
    tr.add_argument("--modality", default="generic")
    tr.add_argument("--normalization", choices=("percentile", "dtype_range"), default="percentile")
    tr.add_argument("--objects", choices=("foreground", "background"), default="foreground",
                    help="instances are connected foreground, or the regions between foreground (membranes)")
    tr.add_argument("--summary", default="", help="one-line model card summary")
    tr.add_argument("--checkpoint", help="resumable state (default: OUT.ckpt)")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    tr.add_argument("--out", required=True, help="the weight file to write (.safetensors; a new path unless "
                    "--overwrite)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out and its checkpoint")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="per-image and mean ± std accuracy, IoU and Dice for both classes")
    ev.add_argument("--model", required=True, help="em | fundus | dermoscopy | weight file")
    ev.add_argument("--images", nargs="+", required=True)
    ev.add_argument("--masks", nargs="+", required=True, help="mask folder(s), paired by file stem")
    ev.add_argument("--split-csv", help="a name,subset CSV: evaluate only images of --subset")
    ev.add_argument("--subset", default="val")
    ev.add_argument("--tta", action="store_true", help="average the 8 flips/transposes (slower)")
    ev.add_argument("--invert-masks", action="store_true")
    ev.add_argument("--fov", help="folder of field-of-view masks (paired by stem): score inside them only")
    ev.add_argument("--threshold", type=_threshold, default=None, help="in (0, 1); default: the model's")
    ev.add_argument("--device", type=_device, default=None, help=DEVICE_HELP)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_evaluate)


def _add_export(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="export a model as a bioimage.io package, ONNX or TorchScript (checked first)",
                        description="Write MODEL for ilastik, deepImageJ, QuPath, bioimageio.core or any ONNX / "
                        "TorchScript runtime. Every export is checked against napari-alnet before it is written "
                        "(each weight format within 1e-4; a package also passes bioimageio.core's test_model); a "
                        "failed check writes nothing. See docs/export.md.")
    ex.add_argument("model", metavar="MODEL", help="em | fundus | dermoscopy | weight file | exported package")
    ex.add_argument("-o", "--out", required=True, metavar="OUT",
                    help="bioimageio: a .zip file (any other name: a folder); onnx: .onnx; torchscript: .pt")
    ex.add_argument("--format", choices=FORMATS, default="bioimageio", help="default bioimageio")
    ex.add_argument("--sample", metavar="IMAGE", help="an image like those the model segments: the package's test "
                    "tensors and cover (default for grayscale models: a generated EM-like slice)")
    ex.add_argument("--name", help="the package's name (default: from MODEL)")
    ex.add_argument("--author", action="append", help="the package's author (repeat for several)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    ex.set_defaults(func=_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alnet", description="AL-Net segmentation for EM, fundus and dermoscopy")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_segment, _add_train, _add_evaluate, _add_export):
        add(sub)
    return parser


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, Slurm, ``docker stop``, a closed terminal), raised where the program is, so
    the same clean-up runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def _raise_interrupted(signum: int, _frame) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 some inputs failed (segment), 2 a usage or input error (nothing
    was written), 128 + signal when interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
    args = build_parser().parse_args(argv)
    handlers = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        print(f"alnet {args.command}: interrupted ({exc or 'SIGINT'})", file=sys.stderr)
        return interrupted_exit_code(exc)
    except (ValueError, OSError) as exc:
        print(f"alnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
