"""The 'Batch segment (AL-Net)' dock: segment files on disk, like ``alnet segment``."""

from __future__ import annotations

from pathlib import Path

import napari
from magicgui.widgets import CheckBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton
from napari.utils.notifications import show_info, show_warning

from ..engine import batch
from ..engine.batch import BatchSummary
from ..engine.progress import Progress
from ..io.weights import WeightsError
from ._models import ModelPicker, device_picker, tile_picker
from ._worker import JobRunner, unwrap
from .segment import precision_picker


class BatchWidget(Container):
    """Choose image files and/or a folder, an output folder, a model and options; press Run.

    Scripting/tests: set ``files``/``folder``/``outdir`` values, then ``start()`` or ``run_blocking()``;
    ``summary`` is the last run's ``BatchSummary`` (written files, kept outputs, failures).
    """

    def __init__(self, viewer: napari.viewer.Viewer | None = None) -> None:
        super().__init__(labels=True)
        self.viewer = unwrap(viewer)
        self.files = FileEdit(label="Files", mode="rm", filter="Images (*.tif *.tiff *.png *.jpg *.jpeg)")
        self.folder = FileEdit(label="or folder", mode="d", value="")
        self.outdir = FileEdit(label="Output folder", mode="d", value="")
        self.models = ModelPicker()
        self.device = device_picker()
        self.precision = precision_picker()
        self.tile = tile_picker()
        self.threshold = FloatSpinBox(label="Threshold", min=0.0, max=0.99, step=0.05, value=0.0,
                                      tooltip="0 = the model's own threshold")
        self.probabilities = CheckBox(text="Also write probabilities", value=False)
        self.instances = CheckBox(text="Instances", value=False)
        self.overwrite = CheckBox(text="Overwrite existing outputs", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel")
        self.progress = ProgressBar(label="")
        self.status = Label(value="")
        self.report = Label(value="")
        self.extend([self.files, self.folder, self.outdir, self.models.combo, self.models.summary, self.device,
                     self.precision, self.tile, self.threshold, self.probabilities, self.instances, self.overwrite,
                     self.run_button, self.cancel_button, self.progress, self.status, self.report])
        self.report.native.setWordWrap(True)
        self.runner = JobRunner("Batch segment (AL-Net)", progress_bar=self.progress, status=self.status,
                                cancel_button=self.cancel_button,
                                controls=[self.files, self.folder, self.outdir, self.models.combo, self.device,
                                          self.precision, self.tile, self.threshold, self.probabilities, self.instances,
                                          self.overwrite, self.run_button])
        self.summary: BatchSummary | None = None
        self._live: list[str] = []
        self.run_button.changed.connect(self.start)

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
            job = batch.segment_files_job(inputs, outdir, model, tile=self.tile.value or None,
                                          threshold=self.threshold.value or None,
                                          probabilities=self.probabilities.value, instances=self.instances.value,
                                          overwrite=self.overwrite.value)
        except (WeightsError, ValueError) as exc:
            show_warning(f"Batch segment: {exc}")
            return False
        self.report.value = ""
        self._live = []
        return self.runner.start(job, self._done, on_progress=self._progress, on_cancelled=self._done)

    def _progress(self, report: Progress) -> None:
        """Show failures as they happen (the core reports them in ``metrics['failure']``)."""
        failure = report.metrics.get("failure")
        if failure is not None:
            self._live.append(f"• {_failure(failure)}")
            self.report.value = "failed so far:\n" + "\n".join(self._live)

    def run_blocking(self) -> bool:
        """``start()`` inline (no thread): for scripts and tests."""
        return self.runner.run_inline(self.start)

    def _done(self, summary: BatchSummary | None) -> None:
        """Show the summary: files written, outputs kept, failures (also after Cancel: finished files stay)."""
        self.summary = summary
        if summary is None:
            return
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
