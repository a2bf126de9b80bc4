"""Live training (the Qt-free core of the Fine-tune dock's *Live* mode): while the user paints, train in short
rounds on what is painted so far and re-predict the displayed slice with the newest weights every few seconds.

The GUI thread hands the painted labels over through a ``Mailbox`` (``post`` copies them and swaps a reference
under a lock: painting never waits for training); ``live_job`` picks up the newest snapshot between optimizer steps,
trains with the request's recipe (the *Quick* preset: frozen encoder stages, small crops centred on the painted
pixels) and yields a ``preview`` of the displayed slice at most every ``LiveConfig.preview_seconds``, once the
newest snapshot has had ``min_steps`` steps. Stopping it (``StopRequested``) saves the newest weights to
``request.out`` and returns a ``TrainResult``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from ..engine.progress import Job, Progress, StopRequested
from ..engine.segmenter import Segmenter
from .data import CropSampler, Pair
from .finetune import (
    AnnotationError,
    FinetuneRequest,
    annotation_pairs,
    as_stack,
    base_metadata,
    check_annotations,
    model_card,
    record_run,
)
from .loop import Trainer, TrainResult
from .precision_check import annotated_guard

#: Seconds the dock waits after the last paint event before it posts the labels (strokes in quick succession are
#: handed over once).
POST_DELAY_S = 0.3


@dataclass(frozen=True)
class Snapshot:
    """Painted labels as they were at ``posted`` (``time.perf_counter()``); ``version`` counts the posts."""

    labels: np.ndarray
    version: int
    posted: float


class Mailbox:
    """The newest painted labels and the displayed slice, handed from the GUI thread to the live worker.

    ``post`` copies the labels outside the lock and only swaps a reference inside it, so the painting side never
    waits for training; the worker reads with ``newest(since=version)``.
    """

    def __init__(self, view: int = 0) -> None:
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._view = int(view)

    def post(self, labels: np.ndarray) -> int:
        """Hand over a copy of ``labels`` (the whole Labels array); returns the snapshot's version."""
        copy = np.array(labels, copy=True)
        with self._lock:
            version = 1 if self._snapshot is None else self._snapshot.version + 1
            self._snapshot = Snapshot(copy, version, time.perf_counter())
        return version

    def show(self, z: int) -> None:
        """The slice the viewer displays now (the next preview predicts it)."""
        with self._lock:
            self._view = int(z)

    @property
    def view(self) -> int:
        with self._lock:
            return self._view

    def newest(self, since: int = 0) -> Snapshot | None:
        """The newest snapshot if it is newer than version ``since``, else None."""
        with self._lock:
            snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.version > since else None


@dataclass(frozen=True)
class LiveConfig:
    """How often live mode previews: at most every ``preview_seconds``, and only after ``min_steps`` optimizer steps
    on the newest snapshot; ``idle_seconds`` between looks at the mailbox while nothing trainable is painted."""

    preview_seconds: float = 3.0
    min_steps: int = 3
    idle_seconds: float = 0.2


class LiveSession:
    """One live run: the image (fixed), the newest trainable snapshot, a ``Trainer`` built at the first one and
    re-targeted at each later one (model, optimizer and step count carry on)."""

    def __init__(self, request: FinetuneRequest, config: LiveConfig) -> None:
        self.request, self.config = request, config
        self.meta = base_metadata(request.base, request.rgb)
        self.base_card = dict(self.meta.card)
        self.meta.threshold = 0.5
        self.stack = as_stack(request.image, request.rgb)
        self.trainer: Trainer | None = None
        self.version = 0  # the snapshot last looked at
        self.trained_version = 0  # the snapshot the trainer trains on
        self.slices: list[int] = []
        self.labels: np.ndarray | None = None
        self.steps_on_snapshot = 0
        self.posted = math.nan
        self.waiting = "live: paint foreground and background; training starts with your first strokes"
        self.last_preview = -math.inf
        self.previewed_slice: int | None = None
        self.losses: list[float] = []
        self.note = ""  # why the newest snapshot is not trained on, if it is not

    def adopt(self, snapshot: Snapshot) -> None:
        """Train on ``snapshot`` from the next step (kept on the earlier one when it cannot be trained on)."""
        self.version = snapshot.version
        request = self.request
        try:
            slices = check_annotations(request.image.shape, snapshot.labels, request.mode, request.rgb)
            pairs = self._pairs(snapshot.labels, slices)
            if self.trainer is None:
                self.trainer = Trainer(pairs, [], self.meta, request.out, config=request.train, init=request.base)
            else:
                retarget(self.trainer, pairs)
        except (AnnotationError, ValueError) as exc:  # AnnotationError is a ValueError
            self.waiting = f"live: {exc}"
            self.note = f" (your newest strokes are not used yet: {exc})"
            return
        self.slices, self.trained_version, self.posted = slices, snapshot.version, snapshot.posted
        self.labels = snapshot.labels  # what the saved model is checked against (bf16 guard) when it is saved
        self.note = ""
        self.steps_on_snapshot = 0

    def _pairs(self, labels: np.ndarray, slices: list[int]) -> list[Pair]:
        request, meta = self.request, self.meta
        pairs = annotation_pairs(request.image, labels, mode=request.mode, slices=slices,
                                 normalization=meta.normalization, in_channels=meta.in_channels, rgb=request.rgb,
                                 input_size=meta.input_size, input_scale=meta.input_scale)
        if request.mode == "dense":  # crops around what was painted, not anywhere on a mostly-background slice
            for pair in pairs:
                pair.focus = pair.mask > 0.5
        return pairs

    def step(self) -> Progress:
        """One optimizer step on the newest trainable snapshot."""
        trainer = self.trainer
        assert trainer is not None
        loss = trainer.step()
        self.losses = [*self.losses[-19:], loss]
        self.steps_on_snapshot += 1
        seconds = trainer.elapsed()
        return Progress(trainer.state.steps, 0, f"live: step {trainer.state.steps}, {seconds:.0f} s, on slices "
                        f"{', '.join(map(str, self._numbers()))}{self.note}", {"loss": loss, "seconds": seconds})

    def preview_due(self, view: int) -> bool:
        """Time for a preview: enough steps on the newest snapshot, and the interval passed (or the view moved)."""
        if self.trainer is None or self.steps_on_snapshot < self.config.min_steps:
            return False
        moved = view != self.previewed_slice
        return moved or time.perf_counter() - self.last_preview >= self.config.preview_seconds

    def preview(self, view: int) -> Progress:
        """The displayed slice predicted with the newest weights (a copy; training is not disturbed)."""
        trainer = self.trainer
        assert trainer is not None
        z = int(np.clip(view, 0, self.stack.shape[0] - 1))
        model = Segmenter.from_network(trainer.scored_model, self.meta, device=trainer.device, precision="fp32")
        probabilities = model.predict(np.asarray(self.stack[z]))
        self.last_preview, self.previewed_slice = time.perf_counter(), view
        metrics = {"preview": probabilities, "preview_slice": z, "snapshot": self.trained_version,
                   "posted": self.posted, "slices": self._numbers(), "steps_on_snapshot": self.steps_on_snapshot}
        return Progress(trainer.state.steps, 0, f"live: preview of slice {self._number(z)} after "
                        f"{trainer.state.steps} steps", metrics)

    def finish(self) -> TrainResult | None:
        """Save the newest weights to ``request.out`` (with the fine-tune card, and bf16 checked against fp32 on
        the slices it trained on last and one unpainted slice: live mode holds none out, ``record_run``); None when
        nothing was trained. The result's one history row says which slices (as the user numbers them) it trained
        on last."""
        trainer = self.trainer
        if trainer is None or not trainer.state.steps:
            return None
        card = model_card(self.request, self.slices, self.base_card)
        card["finetune"] = card["finetune"] | {"live": True, "epochs": 0}
        trainer.metadata = replace(self.meta, card=card)
        metrics = trainer.score_and_save(float(np.mean(self.losses)))
        row = {"slices": self._numbers(), "train_loss": metrics["loss"], "steps": trainer.state.steps}
        result = TrainResult(out=self.request.out, best_epoch=1, best_metrics=metrics, history=[row],
                             steps_done=trainer.state.steps, stopped="stopped", wall_seconds=trainer.elapsed())
        request = self.request
        guard = annotated_guard(self.stack, as_stack(self.labels, False), mode=request.mode, trained=self.slices,
                                held_out=None, prefer=self.previewed_slice, numbers=request.slice_numbers,
                                rgb=request.rgb)
        record_run(request.out, result, guard)
        return result

    def _numbers(self) -> list[int]:
        return [self._number(z) for z in self.slices]

    def _number(self, z: int) -> int:
        numbers = self.request.slice_numbers
        return z if numbers is None else numbers[z]


def retarget(trainer: Trainer, pairs: list[Pair]) -> None:
    """Make ``trainer`` draw its next crops from ``pairs`` (model, optimizer, step count and generator carry on)."""
    config = trainer.config
    if not any(bool((p.mask > 0.5)[~p.ignore].any() if p.ignore is not None else (p.mask > 0.5).any())
               for p in pairs):
        raise ValueError("no foreground is painted yet: paint some foreground (label 1)")
    trainer.sampler = CropSampler(pairs, config.crop, trainer.rng, config.augmentation, focus=config.focus)
    trainer.train_pairs = pairs


def live_job(request: FinetuneRequest, mailbox: Mailbox, *, config: LiveConfig | None = None
             ) -> Job[TrainResult | None]:
    """Train on the newest labels posted to ``mailbox`` until stopped; yields step reports and, every few seconds,
    a ``preview`` of the mailbox's displayed slice (``metrics``: ``preview``, ``preview_slice``, ``snapshot``,
    ``posted``, ``slices``); a stop (``StopRequested``, or closing the generator) saves the newest weights to
    ``request.out`` and returns their ``TrainResult`` (None when no step was trained). ``request.labels`` is the
    first snapshot when ``mailbox`` has none yet."""
    session = LiveSession(request, config or LiveConfig())
    if mailbox.newest() is None and np.any(request.labels):
        mailbox.post(request.labels)
    try:
        while True:
            snapshot = mailbox.newest(since=session.version)
            if snapshot is not None:
                session.adopt(snapshot)
            if session.trainer is None:
                yield Progress(0, 0, session.waiting)
                time.sleep(session.config.idle_seconds)
                continue
            yield session.step()
            view = mailbox.view
            if session.preview_due(view):
                yield session.preview(view)
    except (StopRequested, GeneratorExit) as exc:
        result = session.finish()
        if isinstance(exc, GeneratorExit):
            raise
        return result


__all__ = ["POST_DELAY_S", "LiveConfig", "LiveSession", "Mailbox", "Snapshot", "live_job", "retarget"]
