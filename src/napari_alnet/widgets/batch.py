"""The 'Batch segment (AL-Net)' dock: segment files on disk, like ``alnet segment``."""

from __future__ import annotations

import time
from pathlib import Path

import napari
from magicgui.widgets import CheckBox, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton
from napari.utils.notifications import show_info, show_warning

from ..engine import batch
from ..engine.batch import BatchSummary
from ..engine.progress import Progress
from ..engine.request import SegmentRequest, file_request, segment_job
from ..engine.segmenter import Segmenter
from ..io.volumes import VolumeError, open_volume
from ..io.weights import WeightsError
from ..model.metadata import ModelMetadata
from ._layout import ScrollDock, Section
from ._models import ModelPicker, device_picker, tile_picker
from ._segment_form import precision_picker
from ._worker import JobRunner, unwrap


class BatchWidget(ScrollDock):
    """Choose image files and/or a folder, an output folder, a model and options; press Run.

    Scripting/tests: set ``files``/``folder``/``outdir`` values, then ``start()`` or ``run_blocking()``;
    ``summary`` is the last run's ``BatchSummary`` (written files, kept outputs, failures); ``opened`` the outputs
    shown in the viewer ('Open each output in the viewer').
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:  # napari passes the viewer by this annotation
        super().__init__()
        self.viewer = unwrap(viewer)
        self._build()
        self.runner = JobRunner("Batch segment (AL-Net)", progress_bar=self.progress, status=self.status,
                                cancel_button=self.cancel_button,
                                controls=[self.files, self.folder, self.outdir, self.models.combo, self.device,
                                          self.precision, self.tile, self.threshold, self.probabilities, self.instances,
                                          self.overwrite, self.open_outputs, self.run_button])
        self.summary: BatchSummary | None = None
        self.opened: list[Path] = []
        self._live: list[str] = []
        self._expected: list[Path] = []
        self._current = ""
        self._started = 0.0
        self.run_button.changed.connect(self.start)
        self.models.on_change(self._on_model)
        if self.models.value is not None:
            meta = self.models._describe(self.models.value)
            if meta is not None:
                self._on_model(self.models.value, meta)

    def _build(self) -> None:
        self.files = FileEdit(label="Files", mode="rm", filter="Images (*.tif *.tiff *.png *.jpg *.jpeg)",
                              tooltip="image files to segment (TIFF stacks, PNG, JPEG); they are never changed")
        self.folder = FileEdit(label="or folder", mode="d", value="",
                               tooltip="a folder: every .tif/.png/.jpg image in it (earlier outputs left out)")
        self.outdir = FileEdit(label="Output folder", mode="d", value="",
                               tooltip="where <image>_labels.tif (and _instances.tif, _prob.tif) are written, with "
                                       "each image's pixel size")
        self.models = ModelPicker()
        self.device = device_picker()
        self.precision = precision_picker()
        self.tile = tile_picker()
        self.threshold = FloatSpinBox(label="Threshold", min=0.0, max=0.99, step=0.05, value=0.0,
                                      tooltip="a pixel whose probability is above this is labelled; at the lowest "
                                              "setting the model's own threshold is used")
        self.probabilities = CheckBox(text="Also write probabilities", value=False,
                                      tooltip="also write the network's probability of each pixel as <image>_prob.tif "
                                              "(float32, 0 to 1)")
        self.instances = CheckBox(text="Instances", value=False,
                                  tooltip="also write <image>_instances.tif: each object (cell, lesion) with its "
                                          "own id")
        self.overwrite = CheckBox(text="Overwrite existing outputs", value=False,
                                  tooltip="replace outputs that exist (otherwise they are kept and their images "
                                          "skipped, so a stopped batch continues where it stopped)")
        self.open_outputs = CheckBox(text="Open each output in the viewer", value=False,
                                     tooltip="show each labels file as a layer as soon as it is written")
        self.run_button = PushButton(text="Run", tooltip="segment every chosen image in the background")
        self.cancel_button = PushButton(text="Cancel", tooltip="stop after the current slices; finished files are "
                                        "kept, a partly written file is removed")
        self.progress = ProgressBar(label="", tooltip="slices segmented of all chosen images")
        self.status = Label(value="", tooltip="what the batch is doing")
        self.report = Label(value="", tooltip="files written, kept and failed")
        self.report.native.setWordWrap(True)
        self.advanced = Section("Advanced", [self.device, self.precision, self.tile],
                                tooltip="device, numeric precision and tile size of the network")
        self.extend([self.files, self.folder, self.outdir, self.models.combo, self.models.summary, self.threshold,
                     self.probabilities, self.instances, self.overwrite, self.open_outputs, self.advanced,
                     self.run_button, self.cancel_button, self.progress, self.status, self.report])

    def _on_model(self, _name: str, meta: ModelMetadata) -> None:
        """The threshold's lowest setting reads as what it means: the chosen model's threshold."""
        self.threshold.native.setSpecialValueText(f"model's threshold ({meta.threshold:.2f})")

    def inputs(self) -> list[Path]:
        """The chosen files and folder (``ValueError`` if none); the core expands the folder and reports bad items."""
        paths = [Path(p) for p in (self.files.value or ()) if _chosen(p) is not None]
        folder = _chosen(self.folder.value)
        if folder is not None:
            paths.append(folder)
        if not paths:
            raise ValueError("no input images: choose files, or a folder that contains .tif/.png/.jpg images")
        return list(dict.fromkeys(paths))

    def start(self, *_) -> bool:
        """Check the choices and start the batch in a worker; False (with a notification) if refused."""
        try:
            inputs = self.inputs()
            outdir = _chosen(self.outdir.value)
            if outdir is None:
                raise ValueError("no output folder: choose where the label images are written")
            model = self.models.load(self.device.value).with_precision(self.precision.value)
            job = segment_job(self.request(inputs, outdir, model))
        except (WeightsError, ValueError) as exc:
            show_warning(f"Batch segment: {exc}")
            return False
        self.report.value = ""
        self._live, self.opened, self._current = [], [], ""
        self._started = time.time()
        self._expected = _expected_outputs(inputs, outdir, self.instances.value) if self.open_outputs.value else []
        return self.runner.start(job, self._done, on_progress=self._progress, on_cancelled=self._done)

    def request(self, inputs: list[Path], outdir: Path, model: Segmenter) -> SegmentRequest:
        """The ``SegmentRequest`` of the dock's choices: every input streamed into TIFFs in ``outdir``."""
        return file_request(inputs, outdir, model, tile=self.tile.value or None,
                            threshold=self.threshold.value or None, probabilities=self.probabilities.value,
                            instances="2d" if self.instances.value else None, overwrite=self.overwrite.value,
                            allow_blockwise=False)

    def _progress(self, report: Progress) -> None:
        """Show failures as they happen (the core reports them in ``metrics['failure']``); open outputs once a
        file is done (its outputs are published before the next file's first report)."""
        name = report.message.split(":")[0]
        if self._expected and name != self._current:
            self._current = name
            self._open_written()
        failure = report.metrics.get("failure")
        if failure is not None:
            self._live.append(f"• {_failure(failure)}")
            self.report.value = "failed so far:\n" + "\n".join(self._live)

    def _open_written(self, written: list[Path] | None = None) -> None:
        """Add the outputs written so far (``written``, else the expected ones now on disk and new) as layers."""
        if self.viewer is None:
            return
        new = [p for p in (written if written is not None else self._expected)
               if p.suffix == ".tif" and "_prob" not in p.stem and p not in self.opened and p.is_file()
               and p.stat().st_mtime >= self._started - 1]
        for path in new:
            try:
                volume = open_volume(path)
            except (VolumeError, OSError) as exc:
                show_warning(f"Batch segment: cannot open {path.name}: {exc}")
                continue
            data, scale = volume.data, volume.geometry.scale
            if data.shape[0] == 1:  # a 2D image
                data, scale = data[0], scale[1:]
            self.viewer.add_labels(data, name=path.stem, scale=scale)
            self.opened.append(path)

    def run_blocking(self) -> bool:
        """``start()`` inline (no thread): for scripts and tests."""
        return self.runner.run_inline(self.start)

    def _done(self, summary: BatchSummary | None) -> None:
        """Show the summary: files written, outputs kept, failures (also after Cancel: finished files stay)."""
        self.summary = summary
        if summary is None:
            return
        if self.open_outputs.value:
            self._open_written(summary.written)
        text = f"{len(summary.written)} file(s) written to {_chosen(self.outdir.value)}"
        if summary.skipped:
            text += f"; {len(summary.skipped)} existing output(s) kept (tick 'Overwrite' to replace them)"
        if summary.stopped:
            text = f"cancelled: {text}"
        if summary.failures:
            text += f"; {len(summary.failures)} failed:\n" + "\n".join(f"• {_failure(f)}" for f in summary.failures)
            show_warning(f"Batch segment: {len(summary.failures)} input(s) failed; the list is in the dock")
        else:
            show_info(f"Batch segment: {text}")
        self.report.value = text
        state = "cancelled" if summary.stopped else "done"
        self.status.value = f"{state} on {summary.device} ({summary.precision}) in {summary.seconds:.1f} s"


def _chosen(value) -> Path | None:
    """A FileEdit value, or None when nothing was chosen."""
    return None if value is None or str(value) in ("", ".") else Path(value)


def _failure(failure) -> str:
    if isinstance(failure, tuple) and len(failure) == 2:
        return f"{Path(failure[0]).name}: {failure[1]}"
    return str(failure)


def _expected_outputs(inputs: list[Path], outdir: Path, instances: bool) -> list[Path]:
    """The labels (and instances) files the batch will write, in input order."""
    files, _ = batch.expand_inputs(inputs)
    return [path for f in files for kind, path in batch.output_paths(f, outdir, False, instances).items()
            if kind in ("labels", "instances")]
