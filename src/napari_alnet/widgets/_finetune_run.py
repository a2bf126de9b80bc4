"""The Fine-tune dock's runs (``FinetuneRun``): start a fine-tune, show its progress, register and report what it
saved (also what a live run saved), export it.

After finishing or Stop the model is registered (every model picker lists it at once) and the file works with
``alnet segment --model FILE``; Export writes it as a checked bioimage.io package beside the file
(``engine.export``, in a worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QMessageBox

from ..engine.export import ExportReport, export_job
from ..engine.progress import Progress
from ..engine.registry import ModelRegistry
from ..training.finetune import FinetuneRequest, finetune_job
from ..training.loop import TrainResult
from ..training.meaning import MeaningCheck
from ._finetune_form import IOU, LOSS, NAME
from ._finetune_request import RequestBuilder
from ._layers import upsert

if TYPE_CHECKING:  # the form is only read and written to
    from ._finetune_form import FinetuneForm


class FinetuneRun:
    """Runs for ``form`` (requests from ``requests``): ``request`` is the last started request, ``result`` its
    ``TrainResult``, ``model_name`` the registry name of the saved model, ``meaning`` what the last label-meaning
    check found (None: not checked, e.g. from scratch), ``export_report`` the last export's report."""

    def __init__(self, form: FinetuneForm, requests: RequestBuilder) -> None:
        self.form, self.requests = form, requests
        self.request: FinetuneRequest | None = None
        self.result: TrainResult | None = None
        self.model_name: str | None = None
        self.meaning: MeaningCheck | None = None
        self.export_report: ExportReport | None = None

    def begin(self, request: FinetuneRequest) -> None:
        """A new run of ``request``: forget the last one's result, curve and report."""
        self.request, self.result = request, None
        self.form.curve.clear()
        self.form.report.value = ""

    def start(self, *_) -> bool:
        """Check everything and start fine-tuning in a worker; False (with a notification) if refused."""
        form = self.form
        if form.runner.running:
            show_info(f"{NAME}: already running; wait, or press Stop (the best weights are kept)")
            return False
        try:
            request = self.requests.make_request()
            self.requests.versioned(request)
            check = self.requests.check_meaning(request)
        except ValueError as exc:  # InputProblem, AnnotationError, WeightsError
            show_warning(f"Fine-tune: {exc}")
            return False
        self.meaning = check
        if check is not None and check.flipped:
            answer = ask_flip(form.native, check.message(form.models.value or "the starting model"))
            if answer == "cancel":
                form.status.value = "not started: check what your label 1 marks"
                return False
            request.flip = answer == "flip"
        self.begin(request)
        numbers = request.slice_numbers
        shown = [numbers[z] for z in request.slices or []] if numbers is not None else request.slices or []
        form.status.value = f"fine-tuning on slices {', '.join(map(str, shown))}…"
        image = form.image.value
        return form.runner.start(finetune_job(request), self.finished, on_cancelled=self.finished,
                                 on_progress=lambda report: self.progress(report, image))

    def export(self, *_) -> bool:
        """Export the last fine-tuned model as a bioimage.io package (``<weights>.bioimageio.zip`` beside its weight
        file; its test image is the first training slice) in a worker; False (with a notification) if refused."""
        form = self.form
        if form.runner.running:
            show_info(f"{NAME}: busy; wait until the current run has finished, then export")
            return False
        result, request = self.result, self.request
        if result is None or request is None or not Path(result.out).is_file():
            show_warning("Fine-tune: nothing to export yet; fine-tune a model first, then press Export")
            return False
        out = _export_path(Path(result.out))
        form.status.value = f"exporting {out.name}…"
        job = export_job(result.out, out, "bioimageio", sample=_first_slice(request))
        return form.runner.start(job, self._exported)

    def progress(self, report: Progress, image: Image) -> None:
        """A training report: the curve, and the preview of the run's slice into '<image> (fine-tune preview)'."""
        metrics, form = report.metrics, self.form
        if "loss" in metrics:
            form.curve.add(LOSS, report.step, metrics["loss"])
        if "val_iou" in metrics:
            form.curve.add(IOU, report.step, metrics["val_iou"])
        preview = metrics.get("preview")
        request = self.request
        if preview is not None and request is not None and image in form.viewer.layers:
            z = request.preview_slice if request.slice_numbers is None else request.slice_numbers[request.preview_slice]
            region = (z, slice(None), slice(None)) if request.labels.ndim == 3 else (
                slice(None), slice(None))
            upsert(form.viewer, f"{image.name} (fine-tune preview)", Image, image, np.dtype(np.float32), region,
                   np.asarray(preview, np.float32))

    def finished(self, result: TrainResult | None) -> None:
        """Register the saved model and say where it is (also after Stop: the best weights are kept)."""
        form, request = self.form, self.request
        self.result = result
        if result is None or result.best_epoch < 1 or not Path(result.out).is_file():  # best_epoch: 1-based
            form.report.value = "stopped before any weights were saved; nothing was written"
            form.status.value = "stopped before the first step finished; nothing was written"
            show_info(f"Fine-tune: {form.report.value}")
            return
        steps = request.train.steps_per_epoch if request is not None else 1
        ious = [(row["epoch"] * steps, row["val_iou"]) for row in result.history if "val_iou" in row]
        if ious:  # the epoch reports are authoritative (a live report can arrive after the end)
            form.curve.set(IOU, ious)
        out = Path(result.out)
        out.with_name(out.name + ".ckpt").unlink(missing_ok=True)  # resumable state: the dock does not resume
        self.model_name = _register(form.models.registry, out, None if request is None else request.parent_name,
                                    None if request is None else request.version)
        per_step = result.wall_seconds / max(result.steps_done, 1)
        version = f" (version {request.version})" if request is not None and request.version else ""
        form.status.value = _ending(result, request)
        form.report.value = (f"{form.status.value}. {result.steps_done} steps in {result.wall_seconds:.0f} s "
                             f"({per_step:.2f} s per step with validation). "
                             f"Saved to {out}{version}; '{self.model_name}' is now in the Segment model list")
        form.step_times.record(result.step_time)
        form.update_estimate()  # a measured seconds-per-step now
        form.report.tooltip = str(out)
        show_info(f"Fine-tune: {form.report.value}")

    def live_progress(self, report: Progress) -> None:
        """A live run's step: its loss on the curve (the preview is the live presenter's)."""
        if "loss" in report.metrics:
            self.form.curve.add(LOSS, report.step, report.metrics["loss"])

    def live_saved(self, result: TrainResult | None, request: FinetuneRequest) -> None:
        """Live mode is off: register the newest weights it saved and say where they are."""
        form = self.form
        self.request, self.result = request, result
        if result is None or not Path(result.out).is_file():
            form.status.value = form.report.value = "live mode stopped before any training step; nothing was written"
            show_info(f"Fine-tune: {form.report.value}")
            return
        out = Path(result.out)
        self.model_name = _register(form.models.registry, out, request.parent_name, request.version)
        slices = result.history[-1].get("slices", []) if result.history else []
        version = f" (version {request.version})" if request.version else ""
        form.status.value = (f"live mode off after {result.steps_done} steps in {result.wall_seconds:.0f} s on "
                             f"slices {', '.join(map(str, slices))}; kept the newest weights")
        form.report.value = (f"{form.status.value}. Saved to {out}{version}; '{self.model_name}' is now in the "
                             "Segment model list")
        form.report.tooltip = str(out)
        show_info(f"Fine-tune: {form.report.value}")

    def _exported(self, report: ExportReport | None) -> None:
        form = self.form
        self.export_report = report
        if report is None:
            return
        tests = ", ".join(f"{fmt} {result}" for fmt, result in report.tests.items())
        text = (f"exported {report.path} ({report.size_bytes / 1e6:.0f} MB, {report.seconds:.0f} s): every weight "
                f"format reproduces napari-alnet within 1e-4; bioimageio.core test_model: {tests}")
        form.report.value = f"{form.report.value}\n{text}" if form.report.value else text
        passed = sum(result == "passed" for result in report.tests.values())
        form.status.value = (f"exported {report.path.name}: checked against napari-alnet; bioimageio.core tests "
                             f"passed for {passed} of {len(report.tests)} weight formats")
        show_info(f"Fine-tune: {text}")


def _export_path(weights: Path) -> Path:
    """``<weights stem>.bioimageio.zip`` beside the weight file, numbered so an existing file is never replaced."""
    path, n = weights.with_name(f"{weights.stem}.bioimageio.zip"), 2
    while path.exists():
        path, n = weights.with_name(f"{weights.stem}-{n}.bioimageio.zip"), n + 1
    return path


def _first_slice(request: FinetuneRequest) -> np.ndarray:
    """The first slice the request trained on (the image itself when it is 2D): the package's test image."""
    is_stack = request.image.ndim - int(request.rgb) == 3
    return request.image[(request.slices or [0])[0]] if is_stack else request.image



def ask_flip(parent, text: str) -> str:
    """Ask whether to flip the labels' meaning: ``flip``, ``keep`` (train as painted) or ``cancel``."""
    box = QMessageBox(QMessageBox.Icon.Question, "Fine-tune: what does label 1 mean?", text, parent=parent)
    flip = box.addButton("Flip the meaning", QMessageBox.ButtonRole.YesRole)
    keep = box.addButton("Train as painted", QMessageBox.ButtonRole.NoRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(flip)
    box.exec()
    clicked = box.clickedButton()
    return "flip" if clicked is flip else "keep" if clicked is keep else "cancel"


def _register(registry: ModelRegistry, out: Path, parent: str | None = None, version: int | None = None) -> str:
    """Register ``out`` in ``registry`` under a name derived from its file name (re-registering the same file keeps
    its name)."""
    try:
        return registry.register_path(out, kind="session", parent=parent, version=version).name
    except ValueError as exc:
        show_error(f"Fine-tune: saved to {out} but could not add it to the model list: {exc}")
        return out.stem


def _ending(result: TrainResult, request: FinetuneRequest | None) -> str:
    """How a run ended, in one line that agrees with itself: 'stopped after 1 of 10 epochs and 7 steps of epoch 2;
    kept the best: epoch 2, partly trained (validation IoU 0.812, Dice 0.896)'."""
    how = {"finished": "finished", "budget": "time budget reached"}.get(result.stopped, "stopped")
    epochs = request.train.epochs if request is not None else result.epochs_done
    per_epoch = request.train.steps_per_epoch if request is not None else 0
    partial = result.steps_done - result.epochs_done * per_epoch if per_epoch else 0
    done = f"{result.epochs_done} of {epochs} epoch{'s' * (epochs != 1)}"
    if partial > 0:
        done += f" and {partial} step{'s' * (partial != 1)} of epoch {result.epochs_done + 1}"
    best = f"epoch {result.best_epoch}" + (", partly trained" if result.best_epoch > result.epochs_done else "")
    return f"{how} after {done}; kept the best: {best} ({_describe(result.best_metrics)})"


def _describe(metrics: dict[str, float]) -> str:
    if "iou" in metrics:
        return f"validation IoU {metrics['iou']:.3f}, Dice {metrics.get('dice', float('nan')):.3f}"
    return f"training loss {metrics.get('loss', float('nan')):.3f}"


