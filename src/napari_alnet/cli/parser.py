"""The ``alnet`` argument parser: every flag with its help, each value checked as it is read (``engine.arguments``).

Light on purpose: ``alnet --help`` imports this and ``engine.arguments`` only (no torch, dask, scipy or zarr).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..engine import arguments as checks
from ..terminal import PROGRESS_MODES

DEVICE_HELP = "auto (default: CUDA > MPS > CPU), cpu, cuda, cuda:N or mps"
MODEL_HELP = "em | fundus | dermoscopy (any case) | a .safetensors weight file | an exported bioimage.io package"


def checked(check: Callable, name: str, **options) -> Callable[[str], object]:
    """An argparse ``type`` running ``check(text, name, **options)``: its ``UsageError`` becomes argparse's error
    (exit 2, the usage line, no traceback)."""

    def convert(text: str):
        try:
            return check(text, name, **options)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    convert.__name__ = name
    return convert


def _axes(text: str) -> str:
    """Axis letters for ``--axes``: unique letters with exactly one Y and one X."""
    axes = text.strip().upper()
    if not axes.isalpha() or len(set(axes)) != len(axes) or axes.count("Y") != 1 or axes.count("X") != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected unique axis letters with one Y and one X, e.g. ZYX")
    return axes


def _threshold(name: str = "--threshold") -> Callable[[str], object]:
    return checked(checks.number, name, above=0.0, below=1.0)


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--progress`` and ``--quiet``: how a long command shows its progress."""
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="auto (default): a bar on a terminal, else one line per 5 %% or 30 s (blocks/slices "
                        "done, rate, ETA) for job logs; bar; log; json: one JSON object a line (done, total, unit, "
                        "rate, eta_s, stage) for pipelines; none")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress: only the summary and errors (the same as --progress none)")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="segment a generated EM-like stack with the shipped model")
    demo.add_argument("-o", "--out", default="alnet-demo", metavar="OUTDIR",
                      help="output folder (default ./alnet-demo; created if missing)")
    demo.add_argument("--slices", type=checked(checks.whole, "--slices", maximum=1000), default=3,
                      help="slices of the generated stack (default 3)")
    demo.add_argument("--size", type=checked(checks.whole, "--size", minimum=32, maximum=8192), default=512,
                      help="slice width and height in pixels (default 512)")
    demo.add_argument("--device", type=checked(checks.device_name, "--device"), default=None, help=DEVICE_HELP)
    add_progress(demo)
    demo.set_defaults(parser=demo)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser("segment", help="segment images and TIFF stacks into label (and probability) TIFFs",
                         description="For each input STEM.ext write OUTDIR/STEM_labels.tif (the mask), with "
                         "--instances also OUTDIR/STEM_instances.tif (object ids), with --probabilities "
                         "OUTDIR/STEM_prob.tif. Stacks are streamed slice by slice. Exit code 1 if any input failed, "
                         "2 for a usage error (nothing written). Zarr/N5 inputs, -o ending in .zarr and --instances "
                         "3d write OME-Zarr (STEM_labels.zarr, STEM_prob.zarr) blockwise and resumably: see "
                         "docs/volumes.md.")
    seg.add_argument("inputs", nargs="+", metavar="INPUT",
                     help="TIFF/OME-TIFF stacks, PNG/JPEG images, folders of them, or Zarr/N5 volumes")
    seg.add_argument("-o", "--out", required=True, metavar="OUTDIR",
                     help="output folder (created if missing; outputs are named after each input), or a path "
                     "ending in .zarr for one OME-Zarr output")
    seg.add_argument("--model", type=checked(checks.model_name, "--model"), default="em",
                     help=MODEL_HELP + " (default em)")
    seg.add_argument("--device", type=checked(checks.device_name, "--device"), default=None, help=DEVICE_HELP)
    seg.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"), default="auto",
                     help="auto (default): fp16 on CUDA; on a CPU the fastest precision the model card validates "
                     "(int8 where validated and measured fastest here, bf16 where native), else fp32; fp16 needs "
                     "CUDA, int8 a CPU and onnxruntime (docs/performance.md)")
    seg.add_argument("--tile", type=checked(checks.tile, "--tile"), default=None, metavar="PX",
                     help="tile size in pixels (a multiple of 32, at least 544); default: whole slices up to "
                     "2048 x 2048, larger ones in tiles")
    seg.add_argument("--threshold", type=_threshold(), default=None, help="in (0, 1); default: the model's")
    seg.add_argument("--probabilities", action="store_true", help="also write STEM_prob.tif (float32)")
    seg.add_argument("--instances", nargs="?", const="2d", choices=("2d", "3d"), default=None,
                     help="also label objects (EM: the cells between membranes): 2d (plain --instances) per slice "
                     "into STEM_instances.tif (int32) beside STEM_labels.tif; 3d in 3D, consistent across blocks, "
                     "OME-Zarr")
    seg.add_argument("--watershed", action="store_true",
                     help="with --instances: split touching objects at the ridges of their distance transform "
                     "(seeded by its maxima; in 3D for --instances 3d, using the voxel size; docs/volumes.md)")
    seg.add_argument("--watershed-halo", type=checked(checks.whole, "--watershed-halo", maximum=4096), default=None,
                     metavar="VOXELS",
                     help="OME-Zarr outputs: context of each block's watershed, in voxels of the finest axis "
                     "(default 16); exact across blocks for objects at most this long on each axis")
    seg.add_argument("--block", type=checked(checks.whole, "--block"), nargs=3, metavar=("Z", "Y", "X"), default=None,
                     help="OME-Zarr outputs: block shape (default: whole planes, or ~1536 px YX tiles for planes "
                     "over 2048 x 2048)")
    seg.add_argument("--workers", type=checked(checks.whole, "--workers", maximum=checks.MAX_THREADS), default=None,
                     metavar="N", help="OME-Zarr outputs: run on a local Dask cluster of N worker processes")
    seg.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="OME-Zarr outputs: run on an existing Dask cluster (e.g. dask-jobqueue), tcp://host:port")
    seg.add_argument("--threads", type=checked(checks.threads, "--threads"), default=None, metavar="T",
                     help="OME-Zarr outputs: torch threads per worker (default: the cores / workers)")
    seg.add_argument("--axes", type=_axes, default=None, metavar="AXES",
                     help="how TIFF inputs' axes read, one letter per axis, e.g. ZYX for a stack tifffile marks as "
                          "channels (C or S = colour; any letter but Y, X, C, S = the stack axis)")
    seg.add_argument("--series", type=checked(checks.whole, "--series", minimum=0), default=None, metavar="K",
                     help="which series of a multi-series TIFF to segment (0-based; refused without it)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs never)")
    add_progress(seg)
    seg.set_defaults(parser=seg)


def _add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train AL-Net (the paper's recipe by default) and write a weight file")
    _add_train_data(tr)
    _add_train_recipe(tr)
    _add_train_model(tr)
    add_progress(tr)
    tr.set_defaults(parser=tr)


def _add_train_data(tr: argparse.ArgumentParser) -> None:
    """What to train and validate on (and ``--init``, the weights to start from)."""
    tr.add_argument("--images", nargs="+", required=True, help="image files, folders or TIFF stacks")
    tr.add_argument("--masks", nargs="+", required=True,
                    help="mask folder(s) (paired by file stem) or one mask file/stack for one image")
    tr.add_argument("--split-csv", help="a name,subset CSV: train only on images of --subset")
    tr.add_argument("--subset", default="train", help="the subset of --split-csv to train on (default train)")
    tr.add_argument("--resize", type=checked(checks.whole, "--resize", minimum=32, maximum=8192, zero="off"),
                    default=0, help="train at a reduced resolution: images resized to RESIZE x RESIZE (stored in "
                    "the model; default 0 = off)")
    tr.add_argument("--scale", type=checked(checks.number, "--scale", above=0.0, maximum=16.0), default=1.0,
                    help="train on images zoomed by SCALE (stored in the model; inference and fine-tuning "
                         "zoom the same way; default 1)")
    tr.add_argument("--tune-threshold", action="store_true",
                    help="store the threshold that maximizes validation IoU instead of 0.5")
    tr.add_argument("--val-images", nargs="+", help="validation images (default: --holdout)")
    tr.add_argument("--val-masks", nargs="+", help="validation mask folder(s) (default: --masks)")
    tr.add_argument("--holdout", type=checked(checks.whole, "--holdout", minimum=0), default=0,
                    help="hold out the last N training pairs for validation (default 0 = none)")
    tr.add_argument("--init", type=checked(checks.model_name, "--init"),
                    help="start from a built-in model name (any case) or weight file (fine-tuning)")
    tr.add_argument("--invert-masks", action="store_true", help="foreground is mask == 0 (ISBI membranes)")


def _add_train_recipe(tr: argparse.ArgumentParser) -> None:
    """The optimisation recipe and augmentation (``TrainConfig``)."""
    tr.add_argument("--epochs", type=checked(checks.whole, "--epochs", maximum=100_000), default=150,
                    help="passes of --steps-per-epoch steps, at least 1 (default 150, the paper's)")
    tr.add_argument("--lr", type=checked(checks.number, "--lr", above=0.0, maximum=10.0), default=5e-3,
                    help="initial learning rate (default 5e-3)")
    tr.add_argument("--gamma", type=checked(checks.number, "--gamma", above=0.0, maximum=1.0), default=0.95,
                    help="ExponentialLR decay per epoch, in (0, 1] (default 0.95)")
    tr.add_argument("--batch-size", type=checked(checks.whole, "--batch-size", maximum=4096), default=4,
                    help="crops per step (default 4)")
    tr.add_argument("--crop", type=checked(checks.whole, "--crop", minimum=32, maximum=8192), default=256,
                    help="training crop in pixels, at least 32; smaller images are padded (default 256; at most "
                    "the largest image or 256)")
    tr.add_argument("--steps-per-epoch", type=checked(checks.whole, "--steps-per-epoch", zero="about one pass"),
                    default=0, help="steps per epoch (default 0 = about one pass over the pixels)")
    tr.add_argument("--seed", type=checked(checks.whole, "--seed", minimum=0), default=0,
                    help="random seed of crops and initial weights (default 0)")
    tr.add_argument("--max-minutes", type=checked(checks.number, "--max-minutes", minimum=0.0), default=0.0,
                    help="wall-clock budget in minutes; stops cleanly, keeps the best (default 0 = no budget)")
    tr.add_argument("--device", type=checked(checks.device_name, "--device"), default=None, help=DEVICE_HELP)
    tr.add_argument("--threads", type=checked(checks.whole, "--threads", maximum=checks.MAX_THREADS,
                                              zero="torch's default"), default=0,
                    help="torch threads (default 0 = torch's default, the cores)")
    tr.add_argument("--ema", type=checked(checks.number, "--ema", minimum=0.0, below=1.0), default=0.0,
                    metavar="DECAY",
                    help="validate and save an exponential moving average of the weights (e.g. 0.999; default 0 = "
                    "off)")
    tr.add_argument("--rotate", action="store_true", help="augment: rotate each crop by a random angle")
    tr.add_argument("--zoom", type=checked(checks.number, "--zoom", minimum=1.0, maximum=4.0), default=1.0,
                    help="augment: zoom each crop by a factor drawn from [1/ZOOM, ZOOM] (default 1 = off)")
    tr.add_argument("--intensity-jitter", type=checked(checks.number, "--intensity-jitter", minimum=0.0, maximum=2.0),
                    default=0.0, metavar="J",
                    help="augment: contrast x exp(±J), per-channel gain x exp(±J/2), shift ±J (default 0 = off)")


def _add_train_model(tr: argparse.ArgumentParser) -> None:
    """The network, the metadata stored with it, and where it is written."""
    tr.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 (gray, default) or 3 (RGB) inputs")
    tr.add_argument("--config-json", help="ALNetConfig fields as JSON, e.g. '{\"decoder_stride\": 1}' "
                    "(default: the shipped architecture)")
    tr.add_argument("--modality", default="generic", help="what the model segments, recorded in it (e.g. em)")
    tr.add_argument("--normalization", choices=("percentile", "dtype_range"), default="percentile",
                    help="how images are scaled: percentile (default; 1st-99th) or dtype_range (0-255, 0-65535)")
    tr.add_argument("--objects", choices=("foreground", "background"), default="foreground",
                    help="instances are connected foreground, or the regions between foreground (membranes)")
    tr.add_argument("--summary", default="", help="one-line model card summary")
    tr.add_argument("--checkpoint", help="resumable state (default: OUT.ckpt)")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    tr.add_argument("-o", "--out", required=True, help="the weight file to write (.safetensors; a new path unless "
                    "--overwrite)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out and its checkpoint")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="per-image and mean ± std accuracy, IoU and Dice for both classes")
    ev.add_argument("--model", type=checked(checks.model_name, "--model"), required=True, help=MODEL_HELP)
    ev.add_argument("--images", nargs="+", required=True, help="image files or folders")
    ev.add_argument("--masks", nargs="+", required=True, help="mask folder(s), paired by file stem")
    ev.add_argument("--split-csv", help="a name,subset CSV: evaluate only images of --subset")
    ev.add_argument("--subset", default="val", help="the subset of --split-csv to evaluate (default val)")
    ev.add_argument("--tta", action="store_true", help="average the 8 flips/transposes (slower)")
    ev.add_argument("--invert-masks", action="store_true", help="foreground is mask == 0 (ISBI membranes)")
    ev.add_argument("--fov", help="folder of field-of-view masks (paired by stem): score inside them only")
    ev.add_argument("--threshold", type=_threshold(), default=None, help="in (0, 1); default: the model's")
    ev.add_argument("--device", type=checked(checks.device_name, "--device"), default=None, help=DEVICE_HELP)
    ev.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    add_progress(ev)
    ev.set_defaults(parser=ev)


def _add_export(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="export a model as a bioimage.io package, ONNX or TorchScript (checked first)",
                        description="Write MODEL for ilastik, deepImageJ, QuPath, bioimageio.core or any ONNX / "
                        "TorchScript runtime. Every export is checked against napari-alnet before it is written "
                        "(each weight format within 1e-4; a package also passes bioimageio.core's test_model); a "
                        "failed check writes nothing. See docs/export.md.")
    ex.add_argument("model", metavar="MODEL", type=checked(checks.model_name, "MODEL"), help=MODEL_HELP)
    ex.add_argument("-o", "--out", required=True, metavar="OUT",
                    help="bioimageio: a .zip file (any other name: a new folder); onnx: .onnx; torchscript: .pt")
    ex.add_argument("--format", choices=checks.EXPORT_FORMATS, default="bioimageio", help="default bioimageio")
    ex.add_argument("--sample", metavar="IMAGE", help="an image like those the model segments: the package's test "
                    "tensors and cover (default for grayscale models: a generated EM-like slice)")
    ex.add_argument("--name", help="the package's name (default: from MODEL)")
    ex.add_argument("--author", action="append", help="the package's author (repeat for several)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_progress(ex)
    ex.set_defaults(parser=ex)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alnet", description="AL-Net segmentation for EM, fundus and dermoscopy")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_segment, _add_train, _add_evaluate, _add_export):
        add(sub)
    return parser
