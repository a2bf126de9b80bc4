"""The Fine-tune dock's requests (``RequestBuilder``): the ``FinetuneRequest`` for the form's choices, checked.

Everything is checked in the GUI thread before anything starts; a problem raises a ``ValueError`` (``InputProblem``,
``AnnotationError``, ``WeightsError``) whose message the dock shows. Requests copy what they train on, so painting
during a run changes nothing in it (a live run takes new strokes through its mailbox instead).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels

from ..engine.registry import next_version
from ..io.weights import WeightsError
from ..training.finetune import AnnotationError, FinetuneRequest, check_annotations
from ..training.meaning import MeaningCheck, check_meaning
from ._corrections import corrections_of, training_marks
from ._finetune_slices import AnnotatedSlices, is_big
from ._layers import CURRENT_SLICE, InputProblem, base_data, region_for, spatial_shape
from ._live import painted_labels

if TYPE_CHECKING:  # the form is only read
    from ._finetune_form import FinetuneForm


class RequestBuilder:
    """Requests from ``form``'s choices; ``slices`` keeps its slice list current."""

    def __init__(self, form: FinetuneForm, slices: AnnotatedSlices) -> None:
        self.form, self.slices = form, slices

    def make_request(self) -> FinetuneRequest:
        """The request for the current choices (copies image and annotations); raises with a message to show."""
        form = self.form
        image, labels = form.image.value, form.annotations.value
        if image is None:
            raise InputProblem("no image layer; open an image (File > Open) or a sample (File > Open Sample > "
                               "napari-alnet), then choose it in 'Image'")
        if labels is None:
            raise InputProblem("no annotations layer; press 'New annotations layer', paint a few slices, then "
                               "press Fine-tune")
        if image.multiscale and not is_big(image):
            raise InputProblem(f"layer {image.name!r} is multiscale; fine-tuning needs a single-resolution image")
        if is_big(image) or is_big(labels) or corrections_of(labels) is not None:  # a result: its corrections
            return self._compact_request(image, labels)
        data, annotations = np.asarray(base_data(image)), np.asarray(base_data(labels))
        slices = check_annotations(data.shape, annotations, form.mode.value, bool(image.rgb))
        chosen, holdout = self._chosen(slices)
        base = self.base()
        out = output_path(form.output.value)
        preview = self._preview_slice(image)
        return FinetuneRequest(data, annotations, mode=form.mode.value, slices=chosen, base=base, out=out,
                               train=form.recipe(), holdout=holdout, preview_slice=preview, rgb=bool(image.rgb),
                               image_name=image.name)

    def live_request(self) -> tuple[FinetuneRequest, Image, Labels]:
        """The request of a live run (``widgets._live``): the whole image and what is painted so far (maybe
        nothing yet), a new version of the model in 'Save to'; with the image and annotations layers."""
        form = self.form
        image, labels = form.image.value, form.annotations.value
        if image is None or labels is None:
            raise InputProblem("Live mode needs an image and an annotations layer: choose them, or press 'New "
                               "annotations layer', then turn on Live and paint")
        if image.multiscale or is_big(image) or is_big(labels):
            raise InputProblem(f"Live mode trains on an image held in memory; {image.name!r} is too big or "
                               "multiscale: annotate some slices and press Fine-tune instead")
        data, marks = np.asarray(base_data(image)), painted_labels(labels, form.mode.value)
        spatial = spatial_shape(image)
        if tuple(marks.shape) != spatial or len(spatial) not in (2, 3):
            raise AnnotationError(f"the annotations {labels.name!r} have shape {tuple(marks.shape)} but the image "
                                  f"{image.name!r} has the spatial shape {spatial}; paint them in a Labels layer "
                                  "created for this image ('New annotations layer')")
        base = self.base()
        request = FinetuneRequest(data, marks, mode=form.mode.value, base=base, out=output_path(form.output.value),
                                  train=form.recipe(), rgb=bool(image.rgb), image_name=image.name)
        self.versioned(request)
        return request, image, labels

    def _compact_request(self, image: Image, labels: Labels) -> FinetuneRequest:
        """A request holding only the ticked, held-out and previewed slices of a big or lazy stack (read one by
        one from level 0; the rest of the volume is never read)."""
        form = self.form
        data, annotations = base_data(image), base_data(labels)
        spatial = spatial_shape(image)
        if tuple(annotations.shape) != spatial:
            raise AnnotationError(f"the annotations {labels.name!r} have shape {tuple(annotations.shape)} but the "
                                  f"image {image.name!r} has the spatial shape {spatial}; paint them in a Labels layer "
                                  "created for this image ('New annotations layer')")
        marks_of = training_marks(labels, form.mode.value)  # a Segment result: from its corrections
        if len(spatial) != 3 and not (marks_of is not None and len(spatial) == 2):
            raise AnnotationError(f"fine-tuning takes a 2D image or a 3D stack; {image.name!r} has shape {spatial}")
        self.slices.refresh()
        chosen, holdout = self._chosen(form.slice_list.slices(), rescan=False)
        preview = self._preview_slice(image)
        needed = sorted({*chosen, *([holdout] if holdout is not None else []),
                         *([preview] if preview is not None else [])})
        plane = (lambda a, z: np.asarray(a[z])) if len(spatial) == 3 else (lambda a, z: np.asarray(a[...]))
        stack = np.stack([plane(data, z) for z in needed])
        marks = np.stack([marks_of(z) if marks_of is not None else plane(annotations, z) for z in needed])
        if len(spatial) == 2:  # a 2D result: one image, as the in-memory request has it
            stack, marks = stack[0], marks[0]
        annotated = check_annotations(stack.shape, marks, form.mode.value, bool(image.rgb))
        at = {z: i for i, z in enumerate(needed)}
        base = self.base()
        out = output_path(form.output.value)
        slices = [at[z] for z in chosen if at[z] in annotated]
        return FinetuneRequest(stack, marks, mode=form.mode.value, slices=slices, base=base, out=out,
                               train=form.recipe(), holdout=None if holdout is None else at[holdout],
                               preview_slice=None if preview is None else at[preview], rgb=bool(image.rgb),
                               image_name=image.name, slice_numbers=needed if len(spatial) == 3 else None)

    def _chosen(self, annotated: list[int], rescan: bool = True) -> tuple[list[int], int | None]:
        """The ticked annotated slices and the hold-out slice; raises when nothing is left to train on."""
        if rescan:
            self.slices.refresh_slices()
        chosen = [z for z in self.form.slice_list.checked() if z in annotated]
        if not chosen:
            raise AnnotationError("no annotated slice is ticked in 'Slices': tick the slices to train on")
        holdout = self.form.holdout.value
        if holdout is not None and chosen == [holdout]:
            raise AnnotationError(f"the only ticked slice ({holdout}) is held out for validation; annotate or "
                                  "tick another slice, or set 'Hold out' to (none)")
        return chosen, holdout

    def _preview_slice(self, image: Image) -> int | None:
        if not self.form.preview.value:
            return None
        region = region_for(self.form.viewer, image, CURRENT_SLICE)
        return int(region[0]) if len(region) == 3 else 0

    def base(self) -> str | None:
        """The starting model's source (None: from scratch); raises when none is usable."""
        form = self.form
        if form.scratch.value:
            return None
        name = form.models.value
        if name is None:
            raise WeightsError("no starting model: choose one in 'Start from', load a .safetensors file with "
                               "'Load weights…', or tick 'Train from scratch'")
        form.models.registry.metadata(name)  # raises WeightsError with a clear message if the file is unusable
        return form.models.registry.get(name).source

    def versioned(self, request: FinetuneRequest) -> None:
        """A new version of the model in 'Save to' (never over an earlier run's file), its parent and label 1."""
        form = self.form
        request.out, request.version = next_version(request.out)
        request.parent_name = None if form.scratch.value else form.models.value
        request.foreground = form.foreground.value.strip() or None

    def check_meaning(self, request: FinetuneRequest) -> MeaningCheck | None:
        """Does the painted foreground mean what the starting model's label 1 means? (None from scratch.)"""
        name = self.form.models.value
        if request.base is None or name is None:
            return None
        model = self.form.models.registry.load(name, "cpu")
        images = request.image if request.image.ndim - int(request.rgb) == 3 else request.image[None]
        labels = request.labels if request.labels.ndim == 3 else request.labels[None]
        slices = [z for z in (request.slices or []) if z != request.holdout] or list(request.slices or [])
        return check_meaning(model.predict, images, labels, mode=request.mode, slices=slices,
                             threshold=model.metadata.threshold, card=model.metadata.card)


def output_path(value) -> Path:
    """The weight file 'Save to' names (``.safetensors`` added), its folder made; raises when it cannot be written."""
    if value is None or str(value) in ("", "."):
        raise InputProblem("no output file: choose where to save the model in 'Save to'")
    out = Path(value).expanduser()
    if out.is_dir():
        raise InputProblem(f"{out} is a folder; choose a file name ending in .safetensors in 'Save to'")
    if not out.suffix:
        out = out.with_suffix(".safetensors")
    if out.suffix != ".safetensors" or out.is_dir():
        raise InputProblem(f"the output file {out.name!r} must be a file ending in .safetensors; change 'Save to'")
    # an existing file (the starting model's, an earlier run's) is kept: the run saves a new version beside it
    parent = out.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputProblem(f"cannot write to {parent}; choose a folder you can write to in 'Save to'")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputProblem(f"cannot create the folder {parent} ({exc.strerror}); choose another in "
                           "'Save to'") from exc
    return out
