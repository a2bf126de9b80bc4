"""Exports that run without napari-alnet: bioimage.io packages, ONNX and TorchScript, and loading packages back.

Every shipped model is exported once as a bioimage.io package (its three weight formats, each checked by
bioimageio.core's ``test_model`` during the export); the ONNX and TorchScript files inside it are then compared
with ``Segmenter.predict`` on a 605 x 700 and a 512 x 512 input, and the package is loaded back. The samples are
the models' own data (``../shared/data``; fundus and dermoscopy skip without it, em falls back to the generated
EM-like stack).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import DATA, require_data
from napari_alnet import load_model
from napari_alnet.cli import main
from napari_alnet.engine import export as export_module
from napari_alnet.engine.bioimageio import config_descr, model_name, package_sample, preprocessing, readme
from napari_alnet.engine.export import ExportError, export_model, reference_segmenter
from napari_alnet.engine.portable import (
    ARCHITECTURE_CALLABLE,
    Check,
    architecture_kwargs,
    architecture_source,
    at_network_resolution,
    load_architecture,
    onnx_runner,
    probabilities_with,
    state_dict,
    torchscript_runner,
)
from napari_alnet.engine.progress import run_job
from napari_alnet.engine.resolution import resample_image
from napari_alnet.io.sample_data import em_like_stack, organelle_stack
from napari_alnet.io.stack_reader import read_image
from napari_alnet.io.weights import WeightsError
from napari_alnet.model import ALNet, ALNetConfig
from napari_alnet.model.metadata import ModelMetadata, Normalization
from napari_alnet.training.finetune import FinetuneRequest, finetune_job, finetune_recipe

pytest.importorskip("bioimageio.spec", reason="the export extra is not installed: pip install '.[export]'")
pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install '.[export]'")

SAMPLES = {"em": "isbi2012/train/images/21.png", "fundus": "stare/images/im0239.png",
           "dermoscopy": "isic2018/images/ISIC_0000000.jpg"}


def sample_image(name: str) -> np.ndarray:
    """The model's own data (a held-out image), or for em without the data the generated EM-like slice."""
    if name == "em" and not (DATA / "isbi2012").is_dir():
        return em_like_stack(depth=1, size=512, cells=240)[0][0]
    require_data(SAMPLES[name].split("/")[0])
    return read_image(DATA / SAMPLES[name])


def sizes_605x700_and_512(image: np.ndarray) -> dict[str, np.ndarray]:
    """The image as 605 x 700 (cropped or reflect-padded) and 512 x 512 (cropped or padded)."""
    out = {}
    for h, w in ((605, 700), (512, 512)):
        pad = [(0, max(0, h - image.shape[0])), (0, max(0, w - image.shape[1]))] + [(0, 0)] * (image.ndim - 2)
        out[f"{h}x{w}"] = np.pad(image, pad, mode="reflect")[:h, :w]
    return out


@pytest.fixture(scope="module", params=["em", pytest.param("fundus", marks=pytest.mark.slow),
                                        pytest.param("dermoscopy", marks=pytest.mark.slow)])
def package(request, tmp_path_factory):
    """(model name, sample, package path, report) of one shipped model's bioimage.io package (a zip; dermoscopy's
    a folder, so both outputs are exercised)."""
    name = request.param
    sample = sample_image(name)
    out = tmp_path_factory.mktemp(f"export-{name}") / (f"{name}.zip" if name != "dermoscopy" else name)
    report = export_model(name, out, "bioimageio", sample=sample)
    return name, sample, out, report


def unzipped(package: Path, into: Path) -> Path:
    """A private folder copy of a package (zip or folder)."""
    if package.is_dir():
        return Path(shutil.copytree(package, into))
    with zipfile.ZipFile(package) as zf:
        zf.extractall(into)
    return into


# --- the architecture file ----------------------------------------------------------------------------------------

def test_architecture_file_is_self_contained_and_runs_the_same_network():
    source = architecture_source()
    compile(source, "alnet_architecture.py", "exec")
    assert "napari_alnet" not in "".join(line for line in source.splitlines() if "import" in line)
    net = ALNet(ALNetConfig(in_channels=3)).reparameterize()
    module = load_architecture(source)
    exported = getattr(module, ARCHITECTURE_CALLABLE)(**architecture_kwargs(net.config))
    exported.load_state_dict(state_dict(net), strict=True)
    x = torch.randn(1, 3, 75, 90)  # not a multiple of 32: padded inside, cropped back
    with torch.no_grad():
        assert torch.allclose(exported.eval()(x), net(x), atol=1e-5)


# --- packages of the shipped models -------------------------------------------------------------------------------

def test_package_passes_bioimageio_core_and_napari_alnet_checks(package):
    _name, _sample, out, report = package
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    assert (out / "rdf.yaml" if out.is_dir() else out).is_file() and report.size_bytes == size
    assert report.tests == {f: "passed" for f in ("pytorch_state_dict", "torchscript", "onnx")}, report.summary()
    assert report.checks and all(c.passed for c in report.checks), report.summary()
    assert {c.form for c in report.checks} == {"pytorch_state_dict", "torchscript", "onnx"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging left behind"
    print(report.summary())


def test_package_describes_our_normalization_sigmoid_axes_and_provenance(package, tmp_path):
    name, _sample, out, _report = package
    folder = unzipped(out, tmp_path / "pkg")
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    (image,), (prob,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in image["axes"]] == ["batch", "channel", "space", "space"]
    assert [a["size"] for a in image["axes"][2:]] == [{"min": 32, "step": 32}] * 2
    steps = [p["id"] for p in image["preprocessing"] if p["id"] != "ensure_dtype"]
    assert steps == ["scale_range", "scale_linear"]
    norm = load_model(name).metadata.normalization
    scale = next(p for p in image["preprocessing"] if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"]) == (norm.low, norm.high)
    assert scale["axes"] == ["channel", "y", "x"]
    linear = next(p for p in image["preprocessing"] if p["id"] == "scale_linear")["kwargs"]
    assert (linear["gain"], linear["offset"]) == (1 / norm.std, -norm.mean / norm.std)
    assert [p["id"] for p in prob["postprocessing"] if p["id"] != "ensure_dtype"] == ["sigmoid"]
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert hashlib.sha256((folder / arch["source"]).read_bytes()).hexdigest() == arch["sha256"]
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert "10.3389/frsip.2022.842925" in [c.get("doi") for c in rdf["cite"]] and len(rdf["cite"]) >= 2
    assert rdf["license"] == "BSD-3-Clause" and rdf["covers"]
    assert rdf["config"]["napari_alnet"]["card"] == load_model(name).metadata.to_strings()["card"]
    readme = (folder / rdf["documentation"]["source"]).read_text()
    assert "## Validation" in readme and "## Citation" in readme and "metric" in readme


def test_onnx_and_torchscript_reproduce_predict_on_605x700_and_512x512(package, tmp_path):
    name, sample, out, _report = package
    folder = unzipped(out, tmp_path / "pkg")
    reference = reference_segmenter(name)
    runners = {"onnx": onnx_runner(folder / "weights.onnx"),
               "torchscript": torchscript_runner(folder / "weights_torchscript.pt")}
    for label, image in sizes_605x700_and_512(sample).items():
        expected = reference.predict(image)
        for form, runner in runners.items():
            diff = float(np.abs(probabilities_with(runner, reference.metadata, image) - expected).max())
            print(f"{name} {form} {label}: max |difference| {diff:.2e}")
            assert diff <= 1e-4, f"{name} {form} on {label}: {diff}"


def test_round_trip_through_the_package_gives_identical_probabilities(package, tmp_path):
    name, sample, out, _report = package
    folder = unzipped(out, tmp_path / "pkg")
    image = sizes_605x700_and_512(sample)["605x700"]
    expected = reference_segmenter(name).predict(image)
    for source in (out, folder):
        model = reference_segmenter(load_model(source))
        assert model.metadata.to_strings() == load_model(name).metadata.to_strings()
        assert np.array_equal(model.predict(image), expected), source


def test_bioimageio_core_prediction_reproduces_our_normalization(package):
    """Beyond the test tensor: bioimageio.core's own pipeline on another crop of the sample at network size."""
    core = pytest.importorskip("bioimageio.core")
    name, sample, out, _report = package
    meta = load_model(name).metadata
    image = resample_image(sample, meta.network_shape(sample.shape[:2]))[:160, :224]
    expected = at_network_resolution(reference_segmenter(name)).predict(image)
    tensor = (image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0))[None].astype(np.float32)
    pipeline = core.create_prediction_pipeline(core.load_description(out), weight_format="onnx", devices=["cpu"])
    result = core.predict(model=pipeline, inputs=tensor)
    actual = next(iter(result.members.values())).data.values[0, 0]
    diff = float(np.abs(actual - expected).max())
    print(f"{name}: bioimageio.core (onnx) on {image.shape[:2]}: max |difference| {diff:.2e}")
    assert diff <= 1e-4


# --- single-file formats, refusals, nothing half-written ---------------------------------------------------------

def test_single_file_export_is_checked_and_refuses_to_overwrite(tmp_path):
    """(TorchScript files: ``test_alnet_export_command``.)"""
    out = tmp_path / "em.onnx"
    report = export_model("em", out, "onnx")
    assert out.is_file() and all(c.passed for c in report.checks) and report.checks[0].form == "onnx"
    before = out.read_bytes()
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        export_model("em", out, "onnx")
    assert out.read_bytes() == before
    export_model("em", out, "onnx", overwrite=True)
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_unknown_format_and_paths_in_the_way_are_refused_before_any_work(tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model("em", tmp_path / "m.tflite", "tflite")
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"not a bioimage.io package; refusing to replace it"):
        export_model("em", folder, "bioimageio", overwrite=True)
    assert (folder / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match=r"RGB model's bioimage.io package needs a sample image"):
        export_model("fundus", tmp_path / "f.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_failed_check_says_what_failed_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "compare", lambda *a, **k: [Check("onnx", "sample", (8, 8), 0.25)])
    with pytest.raises(ExportError, match=r"does not reproduce napari-alnet's probabilities: onnx on sample.*FAILED"):
        export_model("em", tmp_path / "em.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_bioimageio_test_leaves_no_package(tmp_path, monkeypatch):
    def failing(package, formats=("onnx",)):
        yield from ()
        return {"onnx": "failed: Reproduce test outputs: 3 of 4096 pixels differ"}

    monkeypatch.setattr(export_module, "model_tests", failing)
    with pytest.raises(ExportError, match=r"failed bioimageio.core's test_model: onnx: failed: Reproduce"):
        export_model("em", tmp_path / "out" / "em.zip", "bioimageio")
    assert list((tmp_path / "out").iterdir()) == []


# --- loading packages that are not ours ---------------------------------------------------------------------------

def foreign_package(folder: Path) -> Path:
    """A minimal zoo-style model description that napari-alnet did not write."""
    folder.mkdir(parents=True)
    (folder / "rdf.yaml").write_text(yaml.safe_dump({
        "format_version": "0.5.4", "type": "model", "name": "UNet nuclei (someone else)",
        "weights": {"torchscript": {"source": "model.pt"}}, "config": {"bioimageio": {}}}))
    return folder


def test_a_foreign_zoo_model_is_not_an_alnet(tmp_path):
    folder = foreign_package(tmp_path / "unet")
    zipped = tmp_path / "unet.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(folder / "rdf.yaml", "rdf.yaml")
    for source in (folder, zipped):
        with pytest.raises(WeightsError, match=r"'UNet nuclei \(someone else\)'.* not an AL-Net exported by "
                                               "napari-alnet"):
            load_model(source)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match=r"is a folder, neither a weight file nor a bioimage.io package"):
        load_model(empty)


def test_an_altered_package_is_refused(package, tmp_path):
    _name, _sample, out, _report = package
    folder = unzipped(out, tmp_path / "pkg")
    weights = folder / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the sha256"):
        load_model(folder)


def test_a_fine_tuned_model_carries_its_provenance_into_the_package_description(tmp_path):
    """Fine-tune em for a few steps (the dock's core); the package's description, README and config carry the
    fine-tune provenance (the dock's Export button writes such a package: tests/test_finetune_widget.py)."""
    images, masks = organelle_stack(depth=2, size=96, count=6)
    request = FinetuneRequest(images, masks.astype(np.uint8), base="em", out=tmp_path / "mito.safetensors",
                              train=finetune_recipe(epochs=1, steps_per_epoch=2, batch_size=2, crop=64),
                              image_name="mito")
    segmenter = reference_segmenter(run_job(finetune_job(request)).out)
    test = package_sample(segmenter, images[0])
    text = readme(segmenter, model_name(segmenter, None), test, [])
    assert "Fine-tuned in napari-alnet from `em` on image layer `mito`" in text and "val_metrics" in text
    card = json.loads(config_descr(segmenter).model_extra["napari_alnet"]["card"])
    assert card["finetune"]["base"] == "em" and card["finetune"]["image_layer"] == "mito"
    assert model_name(segmenter, None) == "AL-Net mito (napari-alnet)"


def test_alnet_export_command(tmp_path, capsys):
    out = tmp_path / "em.pt"
    assert main(["export", "em", "-o", str(out), "--format", "torchscript"]) == 0
    assert out.is_file() and f"torchscript export of em -> {out}" in capsys.readouterr().out
    assert main(["export", "em", "-o", str(out), "--format", "torchscript"]) == 2
    assert "already exists; pass overwrite=True (alnet export --overwrite)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["export", "em", "-o", str(tmp_path / "em.tflite"), "--format", "tflite"])
    assert stopped.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    foreign = foreign_package(tmp_path / "unet")
    assert main(["export", str(foreign), "-o", str(tmp_path / "again.zip")]) == 2
    assert "not an AL-Net exported by napari-alnet" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em.pt", "unet"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_a_dtype_range_model_is_normalized_by_one_scale_linear(dtype):
    """(No shipped model uses it.) The package's steps reproduce ``Normalization.apply`` for integer input."""
    meta = ModelMetadata(normalization=Normalization(kind="dtype_range", mean=0.4, std=0.3))
    (step,) = preprocessing(meta, np.dtype(dtype))
    info = np.iinfo(dtype)
    x = np.array([info.min, 0, info.max // 3, info.max], dtype)
    ours = meta.normalization.apply(x)
    theirs = x.astype(np.float64) * step.kwargs.gain + step.kwargs.offset
    assert step.id == "scale_linear" and np.allclose(theirs, ours, atol=1e-5)
