"""Export a model to run without napari-alnet: a bioimage.io package, an ONNX file or a TorchScript file.

``export_model(model, out, format)`` (``alnet export``; the Fine-tune dock runs ``export_job`` in a worker). Every
export is built in a hidden staging folder beside ``out`` and checked before anything appears there: each exported
form must reproduce ``Segmenter.predict`` (CPU, fp32) within 1e-4 on the package's test image and on the sample;
a package must then pass bioimageio.core's ``test_model`` for each weight format (where bioimageio.core is
installed). A failed check raises ``ExportError`` saying what failed and leaves nothing behind; the result is
renamed into place in one step (``io.atomic``); an existing ``out`` is refused unless ``overwrite``.

``sample``: an image like those the model segments (2D gray or RGB; a stack gives its first slice). The package's
test tensors and cover come from it. Without one, a grayscale model uses the generated EM-like slice
(``io.sample_data``); an RGB model's package needs one (its ONNX/TorchScript check then uses that slice in RGB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io.atomic import move_into_place, staging_directory
from ..io.bioimageio_package import is_package
from ..io.layout import image_layout
from ..io.sample_data import em_like_stack
from ..io.stack_reader import read_image
from ..model.metadata import ModelMetadata
from ..model.network import SegmentationNetwork
from .bioimageio import (
    WEIGHT_FORMATS,
    describe,
    model_name,
    model_tests,
    package_sample,
    readme,
    save_package,
    save_test_data,
)
from .inference import check_pixels
from .portable import (
    ARCHITECTURE_FILE,
    ONNX_OPSET,
    Check,
    ExportError,
    architecture_kwargs,
    architecture_source,
    at_network_resolution,
    check_exportable,
    compare,
    example_input,
    export_network,
    onnx_runner,
    require_passed,
    save_onnx,
    save_torchscript,
    state_dict,
    state_dict_runner,
    torchscript_runner,
)
from .progress import Job, Progress, StopRequested, relay, run_job
from .segmenter import Segmenter, as_segmenter

__all__ = ["FORMATS", "ExportError", "ExportReport", "export_job", "export_model"]

FORMATS = ("bioimageio", "onnx", "torchscript")
#: The sample check runs on a centred crop of at most this many pixels a side.
MAX_CHECK_SIZE = 1024
_PACKAGE_STEPS = 5 + len(WEIGHT_FORMATS) + 1


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and what was checked: ``checks`` (each exported form against ``Segmenter.predict``)
    and ``tests`` (bioimageio.core ``test_model`` per weight format: ``passed`` or ``skipped: ...``)."""

    path: Path
    format: str
    source: str
    seconds: float
    size_bytes: int
    checks: tuple[Check, ...] = ()
    tests: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{self.format} export of {self.source} -> {self.path} ({self.size_bytes / 1e6:.1f} MB, "
                 f"{self.seconds:.1f} s)"]
        lines += [f"  {c}" for c in self.checks]
        lines += [f"  bioimageio.core test_model ({fmt}): {result}" for fmt, result in self.tests.items()]
        return "\n".join(lines)


def export_model(model: Segmenter | SegmentationNetwork | str | Path, out: str | Path, format: str = "bioimageio", *,
                 sample: np.ndarray | str | Path | None = None, overwrite: bool = False, name: str | None = None,
                 authors: list[str] | None = None) -> ExportReport:
    """Export ``model`` (a ``Segmenter``, a network, a built-in name, weight file or package) to ``out``.

    ``format``: ``bioimageio`` (a zip when ``out`` ends in ``.zip``, else a folder), ``onnx`` or ``torchscript``.
    ``name`` and ``authors``: the package's (defaults: from the model's source; ``napari-alnet``).
    """
    return run_job(export_job(model, out, format, sample=sample, overwrite=overwrite, name=name, authors=authors))


def export_job(model: Segmenter | SegmentationNetwork | str | Path, out: str | Path, format: str = "bioimageio", *,
               sample: np.ndarray | str | Path | None = None, overwrite: bool = False, name: str | None = None,
               authors: list[str] | None = None) -> Job[ExportReport | None]:
    """``export_model`` as a ``Job`` (``Progress`` per step; a ``StopRequested`` ends it, writing nothing)."""
    start = time.perf_counter()
    out = Path(out).expanduser()
    check_request(out, format, overwrite)
    segmenter = reference_segmenter(model)
    check_exportable(segmenter.metadata)
    image = prepare_sample(segmenter.metadata, sample, format)
    try:
        with staging_directory(out) as staging:
            if format == "bioimageio":
                job = package_job(segmenter, image, staging, out.suffix.lower() == ".zip", name, authors)
                built, checks, tests = yield from job
            else:
                built, checks = yield from single_file_job(segmenter, image, staging, format)
                tests = {}
            if not overwrite and (out.exists() or out.is_symlink()):  # appeared while the export ran
                raise ExportError(f"{out} appeared while exporting; nothing was replaced (pass overwrite=True)")
            move_into_place(built, out)
    except StopRequested:
        return None
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    return ExportReport(out, format, segmenter.source, time.perf_counter() - start, size, tuple(checks), tests)


def check_request(out: Path, format: str, overwrite: bool) -> None:
    """Refuse, before any work, an unknown format, a missing optional library or an output path in the way."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"{out} already exists; pass overwrite=True (alnet export --overwrite) to replace it")
        if out.is_dir() and not is_package(out):
            raise ExportError(f"{out} is a folder that is not a bioimage.io package; refusing to replace it")
    needed = {"bioimageio": ("bioimageio.spec", "onnx", "onnxruntime"), "onnx": ("onnx", "onnxruntime"),
              "torchscript": ()}[format]
    missing = [m for m in needed if not _importable(m)]
    if missing:
        raise ExportError(f"{format} export needs {', '.join(missing)}: pip install 'napari-alnet[export]'")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def reference_segmenter(model: Segmenter | SegmentationNetwork | str | Path) -> Segmenter:
    """``model`` on the CPU in fp32: what every exported form is compared with."""
    seg = Segmenter.load(model, device="cpu") if isinstance(model, (str, Path)) else as_segmenter(model, "cpu")
    return Segmenter(seg.network, seg.metadata, seg.source, seg.device, "fp32")


def prepare_sample(meta: ModelMetadata, sample: np.ndarray | str | Path | None, format: str) -> np.ndarray:
    """The export's sample as one checked 2D image (gray or RGB, alpha dropped)."""
    if sample is None:
        if meta.in_channels == 3 and format == "bioimageio":
            raise ExportError("an RGB model's bioimage.io package needs a sample image for its test tensors and cover "
                              "(sample=..., alnet export --sample IMAGE): one like the images it segments")
        plane = em_like_stack(depth=1, size=256, cells=60)[0][0]
        return plane if meta.in_channels == 1 else np.repeat(plane[..., None], 3, axis=-1)
    image = read_image(sample) if isinstance(sample, (str, Path)) else np.asarray(sample)
    try:
        layout = image_layout(image.shape)
        image = check_pixels(image[0] if layout.is_stack else image)
    except ValueError as exc:
        raise ExportError(f"unusable sample: {exc}") from exc
    return image[..., :3] if layout.is_rgb else image


def check_crop(image: np.ndarray) -> np.ndarray:
    """A centred crop of at most ``MAX_CHECK_SIZE`` pixels a side."""
    h, w = image.shape[:2]
    top, left = max(0, (h - MAX_CHECK_SIZE) // 2), max(0, (w - MAX_CHECK_SIZE) // 2)
    return image[top:top + MAX_CHECK_SIZE, left:left + MAX_CHECK_SIZE]


def single_file_job(segmenter: Segmenter, sample: np.ndarray, staging: Path, format: str
                    ) -> Job[tuple[Path, list[Check]]]:
    """An ONNX or TorchScript file in ``staging``, checked against ``segmenter`` on the sample."""
    native = at_network_resolution(segmenter)
    net = export_network(native)
    yield Progress(1, 3, f"exporting {format}")
    path = staging / ("model.onnx" if format == "onnx" else "model.pt")
    if format == "onnx":
        save_onnx(net, example_input(native.metadata), path)
        runner = onnx_runner(path)
    else:
        save_torchscript(net, example_input(native.metadata), path)
        runner = torchscript_runner(path)
    yield Progress(2, 3, f"checking {format} against napari-alnet")
    checks = compare(segmenter, {format: runner}, {"sample": check_crop(sample)})
    require_passed(checks)
    yield Progress(3, 3, "writing")
    return path, checks


def package_job(segmenter: Segmenter, sample: np.ndarray, staging: Path, zipped: bool, name: str | None,
                authors: list[str] | None) -> Job[tuple[Path, list[Check], dict[str, str]]]:
    """A bioimage.io package in ``staging`` (zip or folder), checked; returns it, the checks and the tests."""
    total = _PACKAGE_STEPS
    native = at_network_resolution(segmenter)
    folder = staging / "files"
    folder.mkdir()
    test = package_sample(segmenter, sample)
    files = save_test_data(test, folder)
    yield Progress(1, total, "test data and cover")
    files |= yield from _write_weights(native, folder, total)
    checks = _check_files(files, segmenter, native, test.image, sample)
    yield Progress(4, total, "checked against napari-alnet")
    name = model_name(segmenter, name)
    files["readme"] = folder / "README.md"
    files["readme"].write_text(readme(segmenter, name, test, checks))
    try:
        descr = describe(segmenter, files, test.tensor.dtype, architecture_kwargs(native.metadata.config),
                         ONNX_OPSET, name=name, authors=authors)
        package = save_package(descr, staging, zipped)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ExportError(f"bioimageio.spec refused the package description: {exc}") from exc
    yield Progress(5, total, "package written")
    tests = yield from relay(model_tests(package), lambda p: Progress(5 + p.step, total, p.message))
    failed = [f"{fmt}: {result}" for fmt, result in tests.items() if result.startswith("failed")]
    if failed:
        raise ExportError("the package failed bioimageio.core's test_model: " + " || ".join(failed))
    return package, checks, tests


def _write_weights(native: Segmenter, folder: Path, total: int) -> Job[dict[str, Path]]:
    """The architecture source and the three weight formats of ``native`` in ``folder``."""
    files = {"architecture": folder / ARCHITECTURE_FILE, "pytorch_state_dict": folder / "weights.pt",
             "torchscript": folder / "weights_torchscript.pt", "onnx": folder / "weights.onnx"}
    source = architecture_source()
    files["architecture"].write_text(source)
    torch.save(state_dict(native.network), files["pytorch_state_dict"])
    net = export_network(native, source)
    example = example_input(native.metadata)
    save_torchscript(net, example, files["torchscript"])
    yield Progress(2, total, "TorchScript traced")
    save_onnx(net, example, files["onnx"])
    yield Progress(3, total, "ONNX exported")
    return files


def _check_files(files: dict[str, Path], segmenter: Segmenter, native: Segmenter, test_image: np.ndarray,
                 sample: np.ndarray) -> list[Check]:
    """The three written weight formats against napari-alnet on the test image and on the sample."""
    runners = {"pytorch_state_dict": state_dict_runner(files["architecture"], files["pytorch_state_dict"],
                                                       native.metadata.config),
               "torchscript": torchscript_runner(files["torchscript"]), "onnx": onnx_runner(files["onnx"])}
    checks = compare(native, runners, {"test tensor": test_image})
    crop = check_crop(sample)
    if crop.shape != test_image.shape or not np.array_equal(crop, test_image):  # else the same comparison again
        checks += compare(segmenter, runners, {"sample": crop})
    require_passed(checks)
    return checks
