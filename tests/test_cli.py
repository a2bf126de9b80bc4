"""``alnet train`` and ``alnet evaluate`` plumbing: keyword calls into training/, the score table, progress lines."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

import napari_alnet.cli as cli
import napari_alnet.cli.common as cli_common
import napari_alnet.cli.train as cli_train
from model_factory import save_test_model, texture
from napari_alnet.engine import devices
from napari_alnet.engine.progress import Progress
from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.io.weights import load_weights, save_weights
from napari_alnet.training import TrainResult
from napari_alnet.training import load_pairs as real_load_pairs


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_test_model(tmp_path_factory.mktemp("model") / "test.safetensors", modality="em")


@pytest.fixture
def data(tmp_path):
    """Three 64 x 64 EM-like images and ISBI-style masks (0 = membrane); also returns the membranes."""
    stack, membranes = em_like_stack(depth=3, size=64, cells=10, seed=3)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i, (image, membrane) in enumerate(zip(stack, membranes, strict=True)):
        imsave(tmp_path / "images" / f"{i:02d}.png", image, check_contrast=False)
        imsave(tmp_path / "masks" / f"{i:02d}.png", np.where(membrane, 0, 255).astype(np.uint8),
               check_contrast=False)
    return tmp_path, membranes


class FakeTraining:
    """Stands in for ``train_job`` with the keyword-only signature training/ is moving to; records its call and
    writes ``weights`` to ``out`` as the "best" model."""

    def __init__(self, weights):
        self.weights, self.calls, self.closed = weights, [], False

    def __call__(self, train_pairs, val_pairs, metadata, out, *, config=None, init=None, checkpoint=None,
                 resume=False):
        self.calls.append(dict(train=train_pairs, val=val_pairs, metadata=metadata, out=out, config=config,
                               init=init, checkpoint=checkpoint, resume=resume))
        return self._job(out, config)

    def _job(self, out, config):
        model, meta = load_weights(self.weights)
        try:
            for step in range(1, 4):
                yield Progress(step, 3, "epoch 1/1", {"loss": 0.5})
            save_weights(model, meta, out)
            yield Progress(3, 3, "epoch 1/1 done", {"train_loss": 0.5})
        except GeneratorExit:
            self.closed = True
            raise
        return TrainResult(out=out, best_epoch=1, best_metrics={"val_iou": 0.5}, epochs_done=1, steps_done=3,
                           history=[{"epoch": 1, "train_loss": 0.5}], wall_seconds=1.5)


@pytest.fixture
def fake_training(monkeypatch, weights):
    fake = FakeTraining(weights)
    load_calls = []

    def keyword_load_pairs(file_pairs, *, normalization, in_channels, invert, resize, scale):
        load_calls.append(dict(normalization=normalization, in_channels=in_channels, invert=invert, resize=resize,
                               scale=scale))
        return real_load_pairs(file_pairs, normalization=normalization, in_channels=in_channels, invert=invert,
                               resize=resize, scale=scale)

    monkeypatch.setattr(cli_train, "train_job", fake)
    monkeypatch.setattr(cli_train, "load_pairs", keyword_load_pairs)
    fake.load_calls = load_calls
    return fake


def test_train_passes_keywords_and_records_the_run_in_the_card(data, tmp_path, fake_training, capsys):
    folder, _ = data
    out = tmp_path / "trained.safetensors"
    rc = cli.main(["train", "--images", str(folder / "images"), "--masks", str(folder / "masks"), "--invert-masks",
                   "--holdout", "1", "--epochs", "1", "--crop", "32", "--scale", "1.5", "--modality", "em",
                   "--objects", "background", "--half", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert [c["invert"] for c in fake_training.load_calls] == [True]
    assert fake_training.load_calls[0]["scale"] == 1.5 and fake_training.load_calls[0]["in_channels"] == 1
    (call,) = fake_training.calls
    assert len(call["train"]) == 2 and len(call["val"]) == 1 and str(call["out"]) == str(out)
    assert call["config"].epochs == 1 and call["config"].crop == 32
    assert call["init"] is None and call["checkpoint"] is None and call["resume"] is False
    assert call["metadata"].modality == "em" and call["metadata"].objects == "background"
    assert call["metadata"].input_scale == 1.5
    assert "training on 2 pairs, validating on 1; " in captured.err and " x 1 epochs" in captured.err
    done = [line for line in captured.err.splitlines() if line.startswith("train [")]
    assert len(done) == 4  # the first step, 2/3 (a new 5 %), 3/3 and the epoch's summary
    assert re.search(r"3/3 100% [0-9.]+ steps/s epoch 1/1 done train_loss 0.5$", done[-1])
    assert captured.out == f"best epoch 1: val_iou 0.5000; 0.0 min; wrote {out}\n"
    _, meta = load_weights(out)
    assert meta.card["training"]["epochs_done"] == 1 and meta.card["training"]["stopped"] == "finished"
    assert meta.card["training"]["history"] == [{"epoch": 1, "train_loss": 0.5}]
    assert out.stat().st_size < 0.6 * fake_training.weights.stat().st_size  # --half: float16
    bf16 = meta.card["bf16"]  # checked on the held-out image, as the fine-tune dock checks its held-out slice
    assert "on the 1 held-out training image(s) (--holdout)" in captured.err
    if devices.cpu_bf16_support().native:
        assert bf16["slices"] == {"held_out": ["02"]} and bf16["on_training_slices"] is False
        assert isinstance(bf16["validated"], bool) and "label_agreement" in bf16
    else:
        assert bf16["validated"] is False and "not measured" in bf16["skipped"]
    assert meta.card["int8"]["validated"] is False


def test_train_interrupted_closes_the_run_before_saying_where_the_weights_are(data, tmp_path, fake_training,
                                                                              monkeypatch, capsys):
    class InterruptedBar(cli_common.ProgressBar):
        def __call__(self, report):
            if report.step == 2:
                raise KeyboardInterrupt
            super().__call__(report)

    monkeypatch.setattr(cli_common, "ProgressBar", InterruptedBar)
    folder, _ = data
    out = tmp_path / "m.safetensors"
    rc = cli.main(["train", "--images", str(folder / "images"), "--masks", str(folder / "masks"),
                   "--epochs", "1", "--out", str(out)])
    assert rc == 130 and fake_training.closed
    # the stand-in training wrote nothing: saying "the best weights are in OUT" would be false
    assert f"interrupted; no weights were saved yet (nothing was written to {out})" in capsys.readouterr().err


def test_train_refuses_resize_with_scale(data, tmp_path, fake_training, capsys):
    folder, _ = data
    rc = cli.main(["train", "--images", str(folder / "images"), "--masks", str(folder / "masks"),
                   "--resize", "32", "--scale", "2", "--out", str(tmp_path / "m")])
    assert rc == 2 and "alnet train: error: give --resize or --scale, not both" in capsys.readouterr().err
    assert not fake_training.calls


def _table(text: str) -> dict[str, list[float]]:
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["image", "fg", "accuracy", "fg", "iou", "fg", "dice", "bg", "iou", "bg", "dice"]
    return {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}


def test_evaluate_table_threshold_and_fov(data, weights, capsys):
    folder, membranes = data
    args = ["evaluate", "--model", str(weights), "--images", str(folder / "images"), "--masks",
            str(folder / "masks"), "--invert-masks", "--device", "cpu"]
    assert cli.main([*args, "--threshold", "1e-30"]) == 0  # every pixel predicted foreground (membrane)
    captured = capsys.readouterr()
    table = _table(captured.out)
    assert list(table) == ["00", "01", "02", "mean", "std"]
    for i, m in enumerate(membranes):
        accuracy, iou = table[f"{i:02d}"][:2]
        assert accuracy == pytest.approx(m.mean(), abs=1e-4) and iou == pytest.approx(m.mean(), abs=1e-4)
    assert table["mean"][0] == pytest.approx(np.mean([m.mean() for m in membranes]), abs=1e-4)
    assert "evaluate [" in captured.err and "images/s" in captured.err
    fov = folder / "fov"
    fov.mkdir()
    for i in range(3):
        region = np.zeros((64, 64), np.uint8)
        region[:, :32] = 255
        imsave(fov / f"{i:02d}.png", region, check_contrast=False)
    assert cli.main([*args, "--threshold", "1e-30", "--fov", str(fov)]) == 0
    table = _table(capsys.readouterr().out)
    for i, m in enumerate(membranes):
        assert table[f"{i:02d}"][0] == pytest.approx(m[:, :32].mean(), abs=1e-4)


def test_segment_error_lines_and_progress_on_stderr(tmp_path, weights, capsys):
    tifffile.imwrite(tmp_path / "a.tif", (texture((2, 40, 40), 1) * 255).astype(np.uint8))
    rc = cli.main(["segment", str(tmp_path / "missing.tif"), str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"),
                   "--model", str(weights), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1
    lines = captured.err.splitlines()
    assert lines[0].startswith("alnet segment: error: ") and "missing.tif: no such file" in lines[0]
    assert captured.err.count("no such file") == 1  # the error once, as it happens
    progress = lines[1:-1]  # one line per milestone: here every report (each is a new 5 %)
    assert re.fullmatch(r"segment \[\.{24}\] 0/2 0% 0\.00 slices/s failed: missing\.tif", progress[0])
    assert all(re.fullmatch(r"segment \[[#.]{24}\] 1/2 50% [0-9.]+ slices/s ETA \d+s a\.tif: slice 1/2", line)
               for line in progress[1:-1])  # with one slice per forward pass
    assert re.fullmatch(r"segment \[#{24}\] 2/2 100% [0-9.]+ slices/s a\.tif: slice 2/2", progress[-1])
    assert lines[-1] == "1 input(s) failed (the errors are above): missing.tif"
    assert captured.out.startswith("segmented 2 slices into 1 files in ")


@pytest.mark.parametrize(("out_name", "extra", "message"), [
    ("images/00.png", ["--overwrite"], "weight files are written as .safetensors"),
    ("existing.safetensors", [], "existing.safetensors: exists; use --overwrite to replace it"),
    ("existing.safetensors.ckpt", [], "weight files are written as .safetensors"),
    ("new.safetensors", ["--checkpoint", "{folder}/images/00.png", "--overwrite"],
     "00.png: is one of the training or validation inputs; refusing to write over it"),
])
def test_train_never_writes_over_a_file_without_consent(data, tmp_path, fake_training, capsys, out_name, extra,
                                                        message):
    folder, _ = data
    (folder / "existing.safetensors").write_bytes(b"precious")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    rc = cli.main(["train", "--images", str(folder / "images"), "--masks", str(folder / "masks"), "--epochs", "1",
                   "--out", str(folder / out_name), *(e.format(folder=folder) for e in extra)])
    assert rc == 2 and message in capsys.readouterr().err
    assert not fake_training.calls
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # nothing changed or added


def test_train_refuses_an_input_as_output_and_replaces_only_with_overwrite(data, tmp_path, fake_training, capsys):
    folder, _ = data
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    common = ["train", "--images", str(folder / "images"), "--masks", str(folder / "masks"), "--epochs", "1",
              "--out", str(out)]
    assert cli.main(common) == 2 and "use --overwrite" in capsys.readouterr().err
    assert cli.main([*common, "--overwrite"]) == 0 and out.read_bytes() != b"old"


def test_train_stopped_by_its_budget_says_so(data, tmp_path, fake_training, monkeypatch, capsys):
    real_job = fake_training._job

    def budget_job(out, config):
        result = yield from real_job(out, config)
        result.stopped = "budget"
        return result

    monkeypatch.setattr(fake_training, "_job", budget_job)
    folder, _ = data
    rc = cli.main(["train", "--images", str(folder / "images"), "--masks", str(folder / "masks"), "--epochs", "4",
                   "--steps-per-epoch", "300", "--max-minutes", "1", "--out", str(tmp_path / "b.safetensors")])
    assert rc == 0
    assert "stopped at the --max-minutes budget after 3 of 1200 steps (1 of 4 epochs)" in capsys.readouterr().err


def _imported_by(statement: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(done.stdout.split())


def test_the_command_line_starts_without_the_heavy_libraries():
    """``alnet --help`` reads the parser only; a TIFF segment loads torch but neither the volume engine's libraries
    nor SciPy and scikit-image (only instances and resampling need them) (issue 27: start-up was 46 % of a
    100-slice run). Figures: ``python benchmarks/startup.py``."""
    heavy = {"torch", "dask", "distributed", "scipy", "zarr", "ome_zarr", "bioimageio", "skimage", "tqdm"}
    assert not _imported_by("import napari_alnet.cli") & heavy
    assert not _imported_by("import napari_alnet.cli.segment") & {"dask", "distributed", "zarr", "ome_zarr",
                                                                  "bioimageio", "onnx", "onnxruntime", "scipy",
                                                                  "skimage"}


def test_a_tiff_segment_imports_neither_pillow_nor_pyyaml(tmp_path):
    """The TIFF path reads weight files without PyYAML (only bioimage.io packages need it) and TIFFs without Pillow
    (only PNG/JPEG need it), through the whole run of ``alnet segment``, not only its imports."""
    image = tmp_path / "one.tif"
    tifffile.imwrite(image, texture((64, 64), seed=1))
    weights = save_test_model(tmp_path / "m.safetensors")
    run = (f"import napari_alnet.cli as c; assert c.main(['segment', {str(image)!r}, '-o', {str(tmp_path / 'out')!r}, "
           f"'--model', {str(weights)!r}, '--device', 'cpu', '--quiet']) == 0")
    assert not _imported_by(run) & {"yaml", "PIL"}
    assert {"yaml", "PIL"} <= _imported_by("from napari_alnet.io.images import decode_image; "
                                           "from napari_alnet.io.bioimageio_package import _no_alias_loader; "
                                           "_no_alias_loader(); import PIL.Image")


def test_a_sub_command_is_imported_with_the_collector_paused_and_its_objects_frozen():
    """``cli.import_command``: torch's import does not run full garbage collections, and the objects it made are
    frozen so that the run's collections do not walk them again; the collector is on again after."""
    code = ("import gc, sys, napari_alnet.cli as c; seen = []; "
            "gc.callbacks.append(lambda phase, info: phase == 'start' and seen.append(info['generation'])); "
            "c.import_command('segment'); gc.callbacks.clear(); "
            "print(gc.isenabled(), gc.get_freeze_count() > 100_000, 'torch' in sys.modules, seen.count(2))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["True", "True", "True", "0"]
