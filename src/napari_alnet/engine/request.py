"""One request for a segmentation, made by ``alnet segment``, the Segment dock and the Batch dock.

A ``SegmentRequest`` says what is segmented (an array — a layer's data, NumPy, dask or Zarr — and the region of
its scope; or image files, TIFF stacks, folders and Zarr/N5 volumes), by which model, where (device, precision),
and what comes out (labels; probabilities, instances, an output folder or OME-Zarr store); it is checked when it
is made. ``route`` says which path runs it:

- ``IN_MEMORY``: the region is read, the network runs once (``Segmenter.predict_job``);
- ``STREAMING``: files are streamed slice by slice into TIFFs (``engine.batch.segment_files_job``);
- ``BLOCKWISE``: block by block into OME-Zarr, resumably (``engine.volume``'s ``segment_volume_job``),

by the one routing rule (``engine.volume.routing``). ``segment_job`` gives the route's ``Job``. A file request
may mix volumes and files: ``parts()`` splits it into one request per route (one per volume). The volume engine
(dask, zarr) is imported only where the route may be blockwise: TIFF work never loads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import arguments as checks
from .batch import BatchSummary, segment_files_job
from .devices import PRECISION_CHOICES
from .progress import Job
from .segmenter import Prediction, Segmenter, load_model

IN_MEMORY = "in memory"
STREAMING = "streaming stack"
BLOCKWISE = "blockwise"
ROUTES = (IN_MEMORY, STREAMING, BLOCKWISE)

CURRENT_SLICE = "current slice"
FIELD_OF_VIEW = "field of view"
Z_RANGE = "z-range"
WHOLE_STACK = "whole stack"
SCOPES = (CURRENT_SLICE, FIELD_OF_VIEW, Z_RANGE, WHOLE_STACK)

#: The module with the in-memory-or-blockwise rule and the volume engine (imported only when needed).
ROUTING = "napari_alnet.engine.volume.routing"
VOLUME_ENGINE = "napari_alnet.engine.volume"

Region = tuple[int | slice, ...]


@dataclass(frozen=True)
class Scope:
    """What part of an array is segmented: ``name`` (one of ``SCOPES``, as the user chose it) and ``region``, the
    index of that part in the array's spatial axes (``None``: all of it)."""

    name: str = WHOLE_STACK
    region: Region | None = None

    def __post_init__(self) -> None:
        if self.name not in SCOPES:
            raise checks.UsageError(f"scope: must be one of {', '.join(SCOPES)}, got {self.name!r}")
        if self.region is not None:
            odd = [r for r in self.region if not isinstance(r, (slice, int, np.integer))]
            if odd:
                raise checks.UsageError(f"scope: a region is integers and slices, got {odd[0]!r}")
            object.__setattr__(self, "region", tuple(self.region))


@dataclass(frozen=True)
class SegmentOutputs:
    """What a run writes. ``out``: a folder for files (``STEM_labels.tif`` ...), an OME-Zarr labels store
    ``X.zarr`` (probabilities beside it as ``X_prob.zarr``), or ``None`` (in memory); ``temporary``: ``out`` is a
    store the dock made itself (it does not by itself send a run blockwise). ``instances``: ``None``, ``2d`` (per
    slice) or ``3d``; ``watershed`` splits touching instances (``watershed_halo``: its context per block);
    ``prob_dtype``: how OME-Zarr keeps probabilities (``None``: the engine's default)."""

    out: Path | None = None
    probabilities: bool = False
    instances: str | None = None
    watershed: bool = False
    watershed_halo: int | None = None
    prob_dtype: str | None = None
    overwrite: bool = False
    temporary: bool = False

    def __post_init__(self) -> None:
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        if self.instances not in (None, "2d", "3d"):
            raise checks.UsageError(f"instances: must be 2d, 3d or none, got {self.instances!r}")
        if self.watershed and not self.instances:
            raise ValueError("--watershed splits instances: give it with --instances 2d or --instances 3d")
        if self.watershed_halo is not None:
            checks.whole(self.watershed_halo, "watershed_halo", maximum=4096)

    @property
    def to_zarr(self) -> bool:
        """Whether ``out`` names one OME-Zarr store."""
        return self.out is not None and str(self.out).lower().rstrip("/").endswith(".zarr")

    def engine_options(self) -> dict[str, Any]:
        """These outputs as options of ``segment_volume_job`` (the watershed's only when it is on)."""
        options = {"probabilities": self.probabilities, "instances": self.instances, "overwrite": self.overwrite}
        if self.prob_dtype is not None:
            options["prob_dtype"] = self.prob_dtype
        if self.watershed:
            options["watershed"] = True
            if self.watershed_halo is not None:
                options["watershed_halo"] = self.watershed_halo
        return options


@dataclass(frozen=True, eq=False)
class SegmentRequest:
    """A segmentation to run: ``image`` (an array and its ``scope``) or ``inputs`` (paths), ``model`` (a built-in
    name, a weight file or a loaded ``Segmenter``) on ``device`` in ``precision``, ``outputs``; ``threshold``
    (``None``: the model's), ``tile``, ``rgb`` (the image's last axis is colour), ``name`` (how messages name the
    image). Volume engine settings: ``block``, ``workers``, ``scheduler``, ``threads``; TIFF inputs: ``axes``,
    ``series``; ``allow_blockwise``: paths may go to the volume engine. Checked when made (``UsageError`` /
    ``ValueError`` saying what is wrong)."""

    model: str | Path | Segmenter
    image: Any = None
    inputs: tuple[str | Path, ...] = ()
    scope: Scope = field(default_factory=Scope)
    outputs: SegmentOutputs = field(default_factory=SegmentOutputs)
    device: str | None = None
    precision: str | None = None
    threshold: float | None = None
    tile: int | None = None
    rgb: bool = False
    name: str = "the image"
    block: tuple[int, int, int] | None = None
    workers: int | None = None
    scheduler: str | None = None
    threads: int | None = None
    axes: str | None = None
    series: int | None = None
    #: Whether paths may go to the volume engine (the Batch dock streams every input into TIFFs).
    allow_blockwise: bool = True
    _split: tuple[tuple[str | Path, ...], tuple[str | Path, ...]] = field(init=False, repr=False, default=((), ()))

    def __post_init__(self) -> None:
        self._check_common()
        if (self.image is None) == (not self.inputs):
            raise checks.UsageError("a segment request takes an image array or input paths (one of them)")
        if self.image is not None:
            self._check_image()
        else:
            object.__setattr__(self, "inputs", tuple(self.inputs))
            object.__setattr__(self, "_split", self._route_paths())

    def _check_common(self) -> None:
        if not isinstance(self.model, (str, Path, Segmenter)):
            raise checks.UsageError(f"model: give a built-in name, a weight file or a Segmenter, not "
                                    f"{type(self.model).__name__}")
        if self.device is not None and not hasattr(self.device, "type"):
            object.__setattr__(self, "device", checks.device_name(self.device, "device"))
        if self.precision is not None and self.precision not in PRECISION_CHOICES:
            raise checks.UsageError(f"precision: must be one of {', '.join(PRECISION_CHOICES)}, got "
                                    f"{self.precision!r}")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", checks.number(self.threshold, "threshold", above=0.0, below=1.0))
        object.__setattr__(self, "tile", checks.tile(self.tile, "tile"))

    def _check_image(self) -> None:
        shape = spatial_shape(self.image, self.rgb)
        if len(shape) < 2:
            raise ValueError(f"{self.name} is {len(shape)}D; AL-Net needs a 2D image or a stack of 2D images")
        region = self.scope.region
        if region is not None and len(region) != len(shape):
            raise checks.UsageError(f"scope: a region of {len(region)} axes for {self.name} of spatial shape "
                                    f"{shape}")
        if self.outputs.watershed_halo is not None and not self.outputs.watershed:
            raise ValueError("--watershed-halo is the context of the blockwise watershed: give it with --watershed")

    def _route_paths(self) -> tuple[tuple[str | Path, ...], tuple[str | Path, ...]]:
        """(inputs for the volume engine, inputs for the TIFF batch), with the volume settings checked. A Zarr/N5
        volume is a folder: where no input is one and nothing asks for OME-Zarr, all go to the TIFF batch without
        loading the volume engine."""
        outputs = self.outputs
        settings = any(v is not None for v in (self.block, self.workers, self.scheduler, self.threads))
        inputs = [str(i) for i in self.inputs]
        if not self.allow_blockwise or not (outputs.to_zarr or outputs.instances == "3d" or settings
                                            or outputs.watershed_halo is not None
                                            or any(Path(i).is_dir() for i in inputs)):
            volumes, files = [], list(self.inputs)
        else:
            volumes, files = importlib.import_module(ROUTING).volume_routes(inputs, str(outputs.out),
                                                                            outputs.instances, settings)
        if volumes:
            self._check_engine_settings()
        if outputs.watershed_halo is not None and not volumes:
            raise ValueError("--watershed-halo applies to OME-Zarr outputs (Zarr/N5 inputs, -o ending in .zarr, "
                             "--instances 3d); TIFF outputs are split slice by slice, each slice whole")
        if outputs.watershed_halo is not None and not outputs.watershed:
            raise ValueError("--watershed-halo is the context of the blockwise watershed: give it with --watershed")
        if volumes and (self.axes or self.series is not None):
            raise ValueError(f"{volumes[0]}: --axes and --series apply to TIFF inputs written as TIFF outputs; a "
                             "Zarr volume says its axes in its metadata, and a TIFF stack for -o *.zarr must read as "
                             "Z, Y, X")
        return tuple(volumes), tuple(files)

    def _check_engine_settings(self) -> None:
        checks.block(self.block)
        checks.workers(self.workers)
        checks.threads(self.threads)
        if self.workers is not None and self.scheduler is not None:
            raise checks.UsageError("--workers starts a local cluster and --scheduler uses a running one: give one")

    # --- routing -------------------------------------------------------------------------------------------------

    @property
    def route(self) -> str:
        """Which path runs this request (``IN_MEMORY``, ``STREAMING`` or ``BLOCKWISE``); ``ValueError`` for file
        inputs that mix volumes and files (run each of ``parts()``)."""
        if self.image is not None:
            return BLOCKWISE if self._array_blockwise() else IN_MEMORY
        volumes, files = self._split
        if volumes and files:
            raise ValueError(f"{len(volumes)} volume(s) and {len(files)} file(s) take different routes: run each "
                             "of the request's parts()")
        return BLOCKWISE if volumes else STREAMING

    def _array_blockwise(self) -> bool:
        outputs = self.outputs
        voxels = int(np.prod(spatial_shape(self.image, self.rgb), dtype=np.int64))
        zarr_output = outputs.out is not None and not outputs.temporary
        return importlib.import_module(ROUTING).runs_blockwise(instances=outputs.instances, watershed=outputs.watershed,
                                                               zarr_output=zarr_output, voxels=voxels)

    def parts(self) -> list[SegmentRequest]:
        """Requests of one route each: this one for an array; for paths, one per volume (blockwise) and one for
        the files (streamed; the volume engine's settings left out: they do not apply to it)."""
        if self.image is not None:
            return [self]
        volumes, files = self._split
        parts = [replace(self, inputs=(volume,)) for volume in volumes]
        if files and volumes:
            parts.append(replace(self, inputs=files, block=None, workers=None, scheduler=None, threads=None,
                                 outputs=replace(self.outputs, watershed_halo=None)))
        elif files:
            parts.append(self)
        return parts

    @property
    def volumes(self) -> tuple[str | Path, ...]:
        """The inputs the volume engine segments."""
        return self._split[0]

    @property
    def files(self) -> tuple[str | Path, ...]:
        """The inputs streamed into TIFFs."""
        return self._split[1]

    # --- running -------------------------------------------------------------------------------------------------

    def job(self) -> Job[Any]:
        """``segment_job(self)``: the ``Job`` of this request's route."""
        return segment_job(self)

    def loaded(self) -> SegmentRequest:
        """This request with its model loaded (on ``device``, in ``precision``); itself when it is loaded."""
        if isinstance(self.model, Segmenter):
            return self
        return replace(self, model=load_model(self.model, self.device, self.precision or "auto"))

    def region_values(self) -> np.ndarray:
        """The scope's part of the image as a NumPy copy (read now), refused when empty or constant."""
        region = self.scope.region
        values = np.array(self.image if region is None else self.image[region])
        if values.size == 0:
            raise ValueError(f"{self.name} has no pixels in the chosen region; choose another slice or layer")
        lo, hi = np.nanmin(values), np.nanmax(values)
        if lo == hi:
            raise ValueError(f"{self.name} is constant (every pixel is {lo}) in the chosen region; there is "
                             "nothing to segment; check that the right layer and slice are chosen")
        return values

    def region_source(self) -> Any:
        """The scope's part of the image, unread, as the volume engine takes it: a NumPy view or a dask array
        (Zarr and other array-likes wrapped chunk by chunk), always (Z, Y, X[, C]) (one plane gets a Z of one)."""
        import dask.array as da  # the volume engine's library: loaded only for blockwise runs

        data = self.image
        if not isinstance(data, (np.ndarray, da.Array)):
            chunks = getattr(data, "chunks", None)
            chunks = tuple(int(c) for c in chunks) if isinstance(chunks, tuple) and len(chunks) == data.ndim \
                else "auto"
            data = da.from_array(data, chunks=chunks, asarray=True, fancy=False)
        region = self.scope.region
        part = data if region is None else data[region]
        return part[None] if part.ndim - int(self.rgb) == 2 else part


def spatial_shape(array: Any, rgb: bool = False) -> tuple[int, ...]:
    """The shape of ``array`` without its colour axis."""
    shape = tuple(int(n) for n in array.shape)
    return shape[:-1] if rgb else shape


def segment_job(request: SegmentRequest) -> Job[Prediction | BatchSummary | Any]:
    """The ``Job`` of the request's route (its model loaded first where it is a name or a file): in memory a
    ``Prediction`` (the region read and checked now), streaming a ``BatchSummary``, blockwise a ``VolumeSummary``
    (checks and creating the stores happen now too)."""
    request = request.loaded()
    route = request.route
    if route == IN_MEMORY:
        return request.model.predict_job(request.region_values(), tile=request.tile, rgb=request.rgb)
    if route == STREAMING:
        outputs = request.outputs
        return segment_files_job(list(request.inputs), outputs.out, request.model, tile=request.tile,
                                 threshold=request.threshold, probabilities=outputs.probabilities,
                                 instances=bool(outputs.instances), overwrite=outputs.overwrite, axes=request.axes,
                                 series=request.series, watershed=outputs.watershed)
    return _volume_job(request)


def _volume_job(request: SegmentRequest) -> Job[Any]:
    if request.image is not None:
        source = request.region_source()
    elif len(request.inputs) == 1:
        source = str(request.inputs[0])
    else:
        raise ValueError(f"{len(request.inputs)} volumes: run each of the request's parts()")
    if request.outputs.out is None:
        raise checks.UsageError("a blockwise run needs an output store (outputs.out)")
    options = request.outputs.engine_options() | {"threshold": request.threshold, "tile": request.tile,
                                                   "block": request.block}
    engine = importlib.import_module(VOLUME_ENGINE)
    return engine.segment_volume_job(request.model, source, request.outputs.out, workers=request.workers,
                                     scheduler=request.scheduler, threads=request.threads, **options)


def file_request(inputs: Sequence[str | Path], out: str | Path, model: str | Path | Segmenter,
                 **settings: Any) -> SegmentRequest:
    """A request for files and folders into ``out`` (a folder, or one OME-Zarr store); ``settings``: the
    request's other fields, and the outputs' (``probabilities``, ``instances``, ``watershed``, ...)."""
    names = set(SegmentOutputs.__dataclass_fields__)
    outputs = SegmentOutputs(out=Path(out), **{k: v for k, v in settings.items() if k in names})
    return SegmentRequest(model, inputs=tuple(inputs), outputs=outputs,
                          **{k: v for k, v in settings.items() if k not in names})
