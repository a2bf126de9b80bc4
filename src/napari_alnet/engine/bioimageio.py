"""bioimage.io model packages (model spec 0.5, written with ``bioimageio.spec``) of napari-alnet models.

A package holds the fused network three ways — ``pytorch_state_dict`` (architecture: ``alnet_architecture.py``
inside the package, with its sha256), ``torchscript`` and ``onnx`` (see ``portable``) — and describes:

- input ``image``: (batch, channel, y, x) float32, y and x any multiple of 32 (min 32, step 32); other sizes are
  padded bottom/right by edge replication inside the network and cropped back, as napari-alnet does;
- preprocessing = napari-alnet's normalization: ``scale_range`` with the model card's percentiles over
  (channel, y, x) of each image, then ``scale_linear`` with gain ``1/std`` and offset ``-mean/std`` (a dtype-range
  model: one ``scale_linear`` by the dtype's range and the mean/std);
- output ``probability``: (batch, 1, y, x), the network's logits through ``sigmoid`` postprocessing;
- test tensors from a real sample at the network's resolution (``Segmenter.predict`` gives the test output), a
  cover, a README with the card's provenance, metrics and citations, the license, and ``config.napari_alnet`` with
  the weight file's metadata so ``load_model(package)`` gets the model back.

``bioimageio.spec`` (and ``bioimageio.core`` for the model tests) are optional: ``pip install napari-alnet[export]``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from skimage import io as skio

from ..io.bioimageio_package import CONFIG_KEY
from ..io.layout import image_layout
from ..model import ALNet, count_parameters
from ..model.metadata import ModelMetadata
from .normalization import to_channels
from .portable import at_network_resolution, check_exportable
from .progress import Progress
from .resolution import resample_image
from .segmenter import Segmenter

#: A package describes an AL-Net (``portable.check_exportable`` refuses other families): inputs are padded to a
#: multiple of its stride.
STRIDE = ALNet.stride
#: The weight formats of a package, in the order napari-alnet writes and tests them.
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
INPUT_ID, OUTPUT_ID = "image", "probability"
#: Test tensors are a centred crop of the sample, at most this many pixels a side.
MAX_TEST_SIZE = 512
LICENSE = "BSD-3-Clause"
#: What bioimageio.core's test must reproduce: the same bound as napari-alnet's own comparison.
ABSOLUTE_TOLERANCE = 1e-4

ALNET_CITATION = ("X. Du, Y. Nie, F. Wang, T. Lei, S. Wang, X. Zhang. AL-Net: Asymmetric Lightweight Network for "
                  "Medical Image Segmentation. Front. Signal Process. 2:842925 (2022)", "10.3389/frsip.2022.842925")
#: Per modality of the shipped models: dataset citations, output channel, tags, imaging modality.
MODALITIES: dict[str, dict[str, Any]] = {
    "em": {
        "cite": [("A. Cardona et al. An integrated micro- and macroarchitectural analysis of the Drosophila brain by "
                  "computer-assisted serial section electron microscopy. PLoS Biol. 8(10):e1000502 (2010) (ISBI 2012 "
                  "training volume)", "10.1371/journal.pbio.1000502"),
                 ("I. Arganda-Carreras et al. Crowdsourcing the creation of image segmentation algorithms for "
                  "connectomics. Front. Neuroanat. 9:142 (2015) (ISBI 2012 challenge)", "10.3389/fnana.2015.00142")],
        "channel": "membrane", "modality": "electron microscopy (serial-section TEM)",
        "tags": ["electron-microscopy", "membrane-segmentation", "cells", "isbi2012"]},
    "fundus": {
        "cite": [("A. Hoover, V. Kouznetsova, M. Goldbaum. Locating blood vessels in retinal images by piecewise "
                  "threshold probing of a matched filter response. IEEE Trans. Med. Imaging 19(3):203-210 (2000) "
                  "(STARE)", "10.1109/42.845178"),
                 ("J. Staal et al. Ridge-based vessel segmentation in color images of the retina. IEEE Trans. Med. "
                  "Imaging 23(4):501-509 (2004) (DRIVE)", "10.1109/TMI.2004.825627")],
        "channel": "vessel", "modality": "colour fundus photography",
        "tags": ["retinal-vessels", "fundus", "medical-imaging"]},
    "dermoscopy": {
        "cite": [("N. Codella et al. Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the "
                  "International Skin Imaging Collaboration (ISIC). arXiv:1902.03368 (2019)",
                  "10.48550/arXiv.1902.03368"),
                 ("P. Tschandl, C. Rosendahl, H. Kittler. The HAM10000 dataset. Sci. Data 5:180161 (2018)",
                  "10.1038/sdata.2018.161")],
        "channel": "lesion", "modality": "dermoscopy",
        "tags": ["skin-lesion", "dermoscopy", "medical-imaging"]},
}
_GENERIC = {"cite": [], "channel": "foreground", "modality": None, "tags": []}


def napari_alnet_version() -> str:
    try:
        return importlib.metadata.version("napari-alnet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _spec():
    """``bioimageio.spec``'s model 0.5 module, or ``ExportError``-style guidance when the extra is missing."""
    try:
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise ImportError("writing a bioimage.io package needs bioimageio.spec: pip install 'napari-alnet[export]'"
                          ) from exc
    return v0_5


def modality_info(meta: ModelMetadata) -> dict[str, Any]:
    return MODALITIES.get(meta.modality, _GENERIC)


@dataclass(frozen=True)
class PackageSample:
    """The package's test data: ``image`` ((Y, X) or (Y, X, 3) at the network's resolution, a multiple of 32 a
    side) as napari-alnet reads it, ``tensor`` the same as (1, C, Y, X) and ``expected`` (Y, X) probabilities."""

    image: np.ndarray
    tensor: np.ndarray
    expected: np.ndarray


def package_sample(segmenter: Segmenter, sample: np.ndarray) -> PackageSample:
    """A centred crop (each side the largest multiple of 32 up to 512) of ``sample`` brought to the network's
    resolution and channels; ``segmenter`` (run at that resolution) gives the expected probabilities."""
    meta = segmenter.metadata
    check_exportable(meta)
    sample = np.asarray(sample)
    working = meta.network_shape(image_layout(sample.shape).plane)
    image = resample_image(sample, working)
    sizes = [min(MAX_TEST_SIZE, s) // STRIDE * STRIDE for s in working]
    if min(sizes) == 0:
        raise ValueError(f"the sample is {working[0]} x {working[1]} px at the network's resolution; a test "
                         f"image needs at least {STRIDE} x {STRIDE}")
    top, left = (working[0] - sizes[0]) // 2, (working[1] - sizes[1]) // 2
    crop = image[top:top + sizes[0], left:left + sizes[1]]
    channels = to_channels(crop, meta.in_channels)  # luminance for RGB into gray, replicated gray into RGB
    dtype = _input_dtype(meta, sample)
    channels = np.rint(channels).astype(dtype) if np.issubdtype(dtype, np.integer) else channels.astype(dtype)
    image = channels[0] if meta.in_channels == 1 else np.moveaxis(channels, 0, -1)
    return PackageSample(image, channels[None], at_network_resolution(segmenter).predict(image))


def _input_dtype(meta: ModelMetadata, sample: np.ndarray) -> np.dtype:
    """float32, except a dtype-range model keeps the sample's integer dtype (its normalization depends on it)."""
    if meta.normalization.kind == "dtype_range" and np.issubdtype(sample.dtype, np.integer):
        return sample.dtype
    return np.dtype(np.float32)


def preprocessing(meta: ModelMetadata, dtype: np.dtype) -> list:
    """napari-alnet's normalization as bioimage.io preprocessing steps.

    ``(x - mean) / std`` is written as ``scale_linear`` (gain ``1/std``, offset ``-mean/std``: exact in float32)
    rather than ``fixed_zero_mean_unit_variance``, whose implementations divide by ``std + 1e-6``: on the shipped em
    model that alone moved probabilities by 7.4e-5, close to the 1e-4 the export promises.
    """
    v = _spec()
    norm = meta.normalization
    gain, offset = 1.0 / norm.std, -norm.mean / norm.std
    steps: list = []
    if norm.kind == "percentile":
        steps.append(v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
            axes=[v.AxisId("channel"), v.AxisId("y"), v.AxisId("x")], min_percentile=norm.low,
            max_percentile=norm.high)))
    elif np.issubdtype(dtype, np.integer):  # dtype range: (x - lo) / (hi - lo), folded into the linear step
        lo, hi = norm.bounds(np.zeros(1, dtype))
        gain, offset = gain / (hi - lo), offset - gain * lo / (hi - lo)
    steps.append(v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=gain, offset=offset)))
    return steps


def _space_axes(v, size) -> list:
    return [v.SpaceInputAxis(id=v.AxisId(a), size=size) for a in ("y", "x")]


def input_descr(meta: ModelMetadata, test_tensor: Path, sample: Path, dtype: np.dtype):
    v = _spec()
    names = ["gray"] if meta.in_channels == 1 else ["red", "green", "blue"]
    axes = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(n) for n in names]),
            *_space_axes(v, v.ParameterizedSize(min=STRIDE, step=STRIDE))]
    description = (f"{'grayscale' if meta.in_channels == 1 else 'RGB'} image, raw intensities; y, x: multiples of "
                   f"{STRIDE} (see README){_short_resolution_note(meta)}")
    return v.InputTensorDescr(id=v.TensorId(INPUT_ID), description=description, axes=axes,
                              test_tensor=v.FileDescr(source=test_tensor), sample_tensor=v.FileDescr(source=sample),
                              data=v.IntervalOrRatioDataDescr(type=str(dtype)),
                              preprocessing=preprocessing(meta, dtype))


def output_descr(meta: ModelMetadata, test_tensor: Path, sample: Path):
    v = _spec()
    ref = {"tensor_id": v.TensorId(INPUT_ID)}
    axes = [v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(modality_info(meta)["channel"])]),
            *[v.SpaceOutputAxis(id=v.AxisId(a), size=v.SizeReference(axis_id=v.AxisId(a), **ref)) for a in "yx"]]
    objects = "; objects lie between foreground pixels" if meta.objects == "background" else ""
    description = f"{modality_info(meta)['channel']} probability; napari-alnet's threshold: {meta.threshold:g}{objects}"
    return v.OutputTensorDescr(id=v.TensorId(OUTPUT_ID), description=description, axes=axes,
                               test_tensor=v.FileDescr(source=test_tensor), sample_tensor=v.FileDescr(source=sample),
                               data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                               postprocessing=[v.SigmoidDescr()])


def _short_resolution_note(meta: ModelMetadata) -> str:
    if meta.input_size is not None:
        return f"; resize whole images to {meta.input_size[0]} x {meta.input_size[1]} first"
    return f"; zoom images by {meta.input_scale:g} first" if meta.input_scale != 1.0 else ""


def _resolution_note(meta: ModelMetadata) -> str:
    if meta.input_size is not None:
        return (f"; the network was trained on whole images resized to {meta.input_size[0]} x {meta.input_size[1]}: "
                "resize yours to that size first (napari-alnet does) and the probabilities back")
    if meta.input_scale != 1.0:
        return (f"; the network was trained on images zoomed by {meta.input_scale:g}: zoom yours by that factor "
                "first (napari-alnet does) and the probabilities back")
    return ""


def weights_descr(files: dict[str, Path], meta: ModelMetadata, arch_kwargs: dict, opset: int):
    v = _spec()
    version = v.Version(torch.__version__.split("+")[0])
    arch = v.ArchitectureFromFileDescr(source=files["architecture"], callable=v.Identifier("ALNetExport"),
                                       kwargs=arch_kwargs)
    return v.WeightsDescr(
        pytorch_state_dict=v.PytorchStateDictWeightsDescr(source=files["pytorch_state_dict"], architecture=arch,
                                                          pytorch_version=version),
        torchscript=v.TorchscriptWeightsDescr(source=files["torchscript"], pytorch_version=version,
                                              parent="pytorch_state_dict"),
        onnx=v.OnnxWeightsDescr(source=files["onnx"], opset_version=opset, parent="pytorch_state_dict"))


def config_descr(segmenter: Segmenter) -> Any:
    """``config``: bioimage.io's reproducibility tolerance and model facts, and napari-alnet's metadata."""
    v = _spec()
    meta = segmenter.metadata
    info = modality_info(meta)
    tolerance = v.ReproducibilityTolerance(absolute_tolerance=ABSOLUTE_TOLERANCE, relative_tolerance=0.0,
                                           mismatched_elements_per_million=0)
    bioimageio = v.BioimageioConfig(
        reproducibility_tolerance=[tolerance], architecture_type="AL-Net",
        architecture_description="RepVGG-A1 encoder (re-parameterized to plain 3x3 convolutions), Lite R-ASPP "
                                 "context module, asymmetric decoder (Du et al. 2022)",
        modality=info["modality"], target_structure=[info["channel"]], task="semantic segmentation",
        model_parameter_count=count_parameters(segmenter.network))
    ours = meta.to_strings() | {"form": "fused", "exported_by": f"napari-alnet {napari_alnet_version()}"}
    return v.Config(bioimageio=bioimageio, **{CONFIG_KEY: ours})


def model_name(segmenter: Segmenter, name: str | None) -> str:
    """A valid bioimage.io name (letters, digits, ``_+- ()``; 5 to 64 characters)."""
    if name is None:
        stem = Path(segmenter.source).stem if segmenter.source not in MODALITIES else segmenter.source
        name = f"AL-Net {stem} (napari-alnet)"
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    clean = "".join(c if c in allowed else "-" for c in name).strip()[:64]
    return clean if len(clean) >= 5 else f"AL-Net {clean}".strip()


def describe(segmenter: Segmenter, files: dict[str, Path], dtype: np.dtype, arch_kwargs: dict, opset: int, *,
             name: str | None = None, authors: list[str] | None = None, license: str = LICENSE):
    """The package's ``ModelDescr`` (validated by bioimageio.spec as it is built)."""
    v = _spec()
    meta = segmenter.metadata
    info = modality_info(meta)
    cite = [v.CiteEntry(text=t, doi=v.Doi(d)) for t, d in [ALNET_CITATION, *info["cite"]]]
    return v.ModelDescr(
        name=model_name(segmenter, name), description=_description(meta),
        documentation=v.FileDescr(source=files["readme"]), covers=[v.FileDescr(source=files["cover"])],
        authors=[v.Author(name=a) for a in (authors or ["napari-alnet"])], cite=cite,
        license=v.LicenseId(license), timestamp=v.Datetime(datetime.datetime.now(datetime.timezone.utc)),
        tags=["napari-alnet", "al-net", "semantic-segmentation", "2d", "pytorch", "torchscript", "onnx",
              *info["tags"]],
        inputs=[input_descr(meta, files["test_input"], files["sample_input"], dtype)],
        outputs=[output_descr(meta, files["test_output"], files["sample_output"])],
        weights=weights_descr(files, meta, arch_kwargs, opset), config=config_descr(segmenter))


def _description(meta: ModelMetadata) -> str:
    text = f"{meta.summary}. AL-Net (Du et al. 2022) exported from napari-alnet {napari_alnet_version()}."
    return text if len(text) <= 512 else text[:509] + "..."


def save_test_data(sample: PackageSample, folder: Path) -> dict[str, Path]:
    """test_input.npy, test_output.npy, the same as TIFF sample tensors (for viewers), and cover.png in
    ``folder``."""
    files = {"test_input": folder / "test_input.npy", "test_output": folder / "test_output.npy",
             "sample_input": folder / "sample_input.tif", "sample_output": folder / "sample_output.tif",
             "cover": folder / "cover.png"}
    output = sample.expected[None, None].astype(np.float32)
    np.save(files["test_input"], sample.tensor)
    np.save(files["test_output"], output)
    tifffile.imwrite(files["sample_input"], sample.tensor[0], photometric="minisblack")
    tifffile.imwrite(files["sample_output"], output[0], photometric="minisblack")
    skio.imsave(files["cover"], cover_image(sample.image, sample.expected), check_contrast=False)
    return files


def cover_image(image: np.ndarray, probs: np.ndarray, side: int = 256) -> np.ndarray:
    """A 2:1 RGB uint8 cover: the image (1-99 % contrast) on the left, the probabilities in green over it on the
    right."""
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, [1, 99])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
    over = rgb * 0.6
    over[..., 1] = np.maximum(over[..., 1], probs)
    panels = [resample_image(p.astype(np.float32), (side, side)) for p in (rgb, over)]
    return (np.clip(np.concatenate(panels, axis=1), 0, 1) * 255).astype(np.uint8)


def readme(segmenter: Segmenter, name: str, sample: PackageSample, checks: list) -> str:
    """The package's documentation: what it does, how to feed it, provenance, metrics, citations."""
    meta = segmenter.metadata
    info = modality_info(meta)
    norm = meta.normalization
    if norm.kind == "percentile":
        how = (f"per image, intensities between the {norm.low:g} and {norm.high:g} percentiles (over all channels) "
               f"are mapped to [0, 1] (`scale_range`), then `(x - {norm.mean:g}) / {norm.std:g}` (`scale_linear`, "
               "exact; `fixed_zero_mean_unit_variance` would divide by std + 1e-6)")
    else:
        how = (f"integers divided by their dtype's range, then `(x - {norm.mean:g}) / {norm.std:g}`, as one "
               "`scale_linear`")
    lines = [f"# {name}", "", meta.summary, "",
             f"AL-Net (Du et al., Front. Signal Process. 2022) exported by napari-alnet {napari_alnet_version()} on "
             f"{datetime.date.today().isoformat()} from `{Path(segmenter.source).name}`.", "",
             "## Input and output", "",
             f"- **input** `{INPUT_ID}`: (batch, channel, y, x), {meta.in_channels} channel(s), raw intensities; y "
             f"and x any multiple of {STRIDE}. Other sizes work too: the network pads bottom/right by edge "
             f"replication to a multiple of {STRIDE} and crops the output back (what napari-alnet does)"
             f"{_resolution_note(meta)}.",
             f"- **preprocessing** (napari-alnet's normalization): {how}.",
             f"- **output** `{OUTPUT_ID}`: (batch, 1, y, x) {info['channel']} probability (sigmoid of the logits); "
             f"napari-alnet's threshold is {meta.threshold:g}"
             + ("; cells/objects are the regions between foreground pixels." if meta.objects == "background" else "."),
             "- The context module pools the deepest features over the whole input, so predicting in tiles differs "
             "slightly from predicting the whole image; use tiles as large as memory allows.",
             "", "## Validation", "",
             "Checked by napari-alnet before the package was written: each weight format against napari-alnet's own "
             "inference (CPU, fp32), and bioimageio.core's `test_model` for each weight format.", "",
             f"Test tensors: {sample.tensor.shape[-2]} x {sample.tensor.shape[-1]} crop of the export sample.", "",
             *[f"- {c}" for c in checks], "", *card_markdown(meta.card), "## Citation", "",
             f"- {ALNET_CITATION[0]}. doi:{ALNET_CITATION[1]}", *[f"- {t}. doi:{d}" for t, d in info["cite"]], "",
             "## License", "", f"{LICENSE} (napari-alnet). The training data have their own terms; see the "
             "dataset citations.", ""]
    return "\n".join(lines)


def card_markdown(card: dict[str, Any]) -> list[str]:
    """Markdown lines for a model card: fine-tune provenance, each training stage, and every metrics table."""
    lines = ["## Provenance (model card)", ""]
    tune = card.get("finetune")
    if isinstance(tune, dict):
        lines += [f"Fine-tuned in napari-alnet from `{tune.get('base')}` on image layer `{tune.get('image_layer')}` "
                  f"({tune.get('mode')} annotations, slices {tune.get('slices')}, {tune.get('epochs')} epochs, seed "
                  f"{tune.get('seed')}, hold-out slice {tune.get('holdout')}).", ""]
    for key, value in card.items():
        if key in ("summary", "finetune"):
            continue
        if isinstance(value, dict):
            lines += _card_section(key, value)
        elif isinstance(value, (str, int, float)):
            lines += [f"**{key}**: {value}", ""]
    lines += ["The complete card (JSON, with the per-epoch history) is in `config.napari_alnet.card` of rdf.yaml.",
              ""]
    return lines


def _card_section(key: str, entry: dict[str, Any]) -> list[str]:
    lines = [f"### {key}", ""]
    if "command" in entry:
        lines += ["```", str(entry["command"]), "```", ""]
    for field in ("init", "best_epoch", "epochs_done", "steps_done", "stopped", "wall_seconds", "note"):
        if field in entry:
            lines.append(f"- {field}: {entry[field]}")
    for field in ("train_pairs", "val_pairs", "images"):
        if isinstance(entry.get(field), list):
            lines.append(f"- {field}: {len(entry[field])} ({', '.join(map(str, entry[field][:12]))}"
                         f"{', ...' if len(entry[field]) > 12 else ''})")
    metrics = {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("best_epoch", "epochs_done", "steps_done", "wall_seconds")}
    nested = {k: v for k, v in entry.items() if isinstance(v, dict) and "metric" in k}
    lines += _metrics_table(metrics) if metrics else []
    for sub, values in nested.items():
        lines += ["", f"{sub}:", *_metrics_table({k: v for k, v in values.items() if isinstance(v, (int, float))})]
    if isinstance(entry.get("recipe"), dict):
        lines += ["", f"recipe: `{json.dumps(entry['recipe'], sort_keys=True)}`"]
    return [*lines, ""]


def _metrics_table(values: dict[str, float]) -> list[str]:
    return ["", "| metric | value |", "| --- | --- |", *[f"| {k} | {v:.4f} |" if isinstance(v, float)
                                                        else f"| {k} | {v} |" for k, v in values.items()]]


def save_package(descr: Any, staging: Path, zipped: bool) -> Path:
    """Write ``descr`` with its files as ``staging/package.zip`` or the folder ``staging/package`` (bioimageio.spec
    checks the result as it writes); the path to test and to move into place."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    with _quiet_bioimageio():
        if zipped:
            return save_bioimageio_package(descr, output_path=staging / "package.zip")
        return save_bioimageio_package_as_folder(descr, output_path=staging / "package")


def model_tests(package: Path, formats: tuple[str, ...] = WEIGHT_FORMATS):
    """A ``Job`` running bioimageio.core's ``test_model`` on ``package`` for each weight format; returns
    ``{format: "passed" | "failed: ..." | "skipped: ..."}``."""
    try:
        from bioimageio.core import test_model
    except ImportError:
        return {f: "skipped: bioimageio.core is not installed (pip install 'napari-alnet[export]')" for f in formats}
    source = package / "rdf.yaml" if package.is_dir() else package
    results = {}
    for step, fmt in enumerate(formats, 1):
        yield Progress(step, len(formats), f"bioimageio.core test_model ({fmt})")
        with _quiet_bioimageio():
            summary = test_model(source, weight_format=fmt, devices=["cpu"])
        results[fmt] = "passed" if summary.status == "passed" else "failed: " + "; ".join(_failures(summary))
    return results


def _failures(summary: Any) -> list[str]:
    """The failed checks of a bioimageio ``ValidationSummary``, one line each."""
    out = []
    for detail in summary.details:
        if detail.status == "failed":
            errors = " | ".join(" ".join(str(e.msg).split())[:400] for e in detail.errors)
            out.append(f"{detail.name}: {errors}" if errors else detail.name)
    return out or [f"status {summary.status}"]


class _quiet_bioimageio:
    """bioimageio's loguru logging off while its tests run (it logs every step at INFO)."""

    def __enter__(self):
        try:
            from loguru import logger
        except ImportError:
            logger = None
        self.logger = logger
        if logger is not None:
            logger.disable("bioimageio")
        logging.getLogger("bioimageio").disabled = True
        return self

    def __exit__(self, *exc):
        if self.logger is not None:
            self.logger.enable("bioimageio")
        logging.getLogger("bioimageio").disabled = False
        return False
