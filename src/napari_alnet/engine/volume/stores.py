"""The output stores of a volume run: where they go, their arrays (labels, probabilities, ``alnet_state/``),
claiming one safely (never inside the input, never over what we did not make), and full disks said plainly."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ...io.atomic import claim_writer, is_disk_full, write_error, writer_lock
from ...io.volumes import (
    N5_SUFFIXES,
    ZARR_SUFFIXES,
    Volume,
    VolumeError,
    create_output,
    open_output,
    record_of,
    remove_output,
)
from ..instances3d import FACE_AXES
from .plan import BlockPlan
from .records import RECORD_VERSION, differences
from .settings import Settings

STATE = "alnet_state"


PENDING, COMPUTED, FINAL = 0, 1, 2


@dataclass
class Outputs:
    """The arrays a run writes (zarr arrays pickle by store path and are reopened on workers)."""

    labels: zarr.Array
    state: zarr.Array
    probabilities: zarr.Array | None = None
    context: zarr.Array | None = None
    local: zarr.Array | None = None
    counts: zarr.Array | None = None
    #: The watershed split: its ids and counts per block, which blocks are split, and per face axis the planes
    #: beyond each block's faces as its window saw them (index 2 * block position + side along that axis).
    split: zarr.Array | None = None
    split_counts: zarr.Array | None = None
    split_state: zarr.Array | None = None
    ghosts: tuple[zarr.Array | None, ...] = (None, None, None)


@dataclass(frozen=True)
class Targets:
    """Where the labels (and probabilities) go: paths, or groups given by the caller."""

    labels: Path | zarr.Group
    probabilities: Path | zarr.Group | None


def output_targets(volume: Volume, dest: str | Path | zarr.Group, probabilities: bool,
                   prob_dest: str | Path | zarr.Group | None = None) -> Targets:
    """``dest`` ending in .zarr (or a group): the labels there, probabilities in ``prob_dest`` or a sibling
    ``STEM_prob.zarr``; any other ``dest`` is a folder for ``STEM_labels.zarr`` and ``STEM_prob.zarr``."""
    if isinstance(dest, zarr.Group):
        if probabilities and prob_dest is None:
            raise ValueError("with a Zarr group as dest, give prob_dest (a path or group) for the probabilities")
        return Targets(dest, prob_dest if probabilities else None)
    dest = Path(dest)
    labels = dest if dest.name.lower().endswith(".zarr") else dest / f"{volume.name}_labels.zarr"
    prob = Path(prob_dest) if prob_dest is not None else prob_path(labels)
    return Targets(labels, prob if probabilities else None)


def prob_path(labels: Path) -> Path:
    """The probability store beside a labels store ``X.zarr`` or ``X_labels.zarr``: ``X_prob.zarr``."""
    labels = Path(labels)
    stem = labels.name[: -len(".zarr")]
    stem = stem[: -len("_labels")] if stem.endswith("_labels") else stem
    return labels.with_name(f"{stem}_prob.zarr")


#: Names that make a folder part of a Zarr or N5 container.
_CONTAINER_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


def input_root(path: Path) -> Path:
    """The outermost Zarr/N5 container holding ``path`` (a folder named *.zarr / *.n5 or holding Zarr metadata, or
    an N5 root), or ``path`` itself when none does: everything under it is the user's input."""
    path = Path(path).resolve()
    root = path
    for folder in (path, *path.parents):
        named = folder.name.lower().endswith((*ZARR_SUFFIXES, *N5_SUFFIXES))
        if named or any((folder / n).is_file() for n in _CONTAINER_FILES) or _is_n5_root(folder):
            root = folder
    return root


def _is_n5_root(folder: Path) -> bool:
    try:
        return "n5" in json.loads((folder / "attributes.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _source_path(volume: Volume) -> Path | None:
    """Where the source lies on disk: its path, or the local store of an on-disk Zarr array given as an array."""
    if volume.path is not None:
        return Path(volume.path)
    return store_path(getattr(volume.reader, "_raw", None))


def store_path(node: Any) -> Path | None:
    root = getattr(getattr(node, "store", None), "root", None)
    return Path(str(root)) / getattr(node, "path", "") if root is not None else None


def check_not_source(target: Path | None, volume: Volume) -> None:
    """``VolumeError`` when an output would lie anywhere inside the input's container (or hold the input)."""
    source = _source_path(volume)
    if target is None or source is None:
        return
    out, root, src = Path(target).resolve(), input_root(source), source.resolve()
    if out == root or root in out.parents or out in src.parents:
        raise VolumeError(f"output {target} lies inside (or holds) the input {source} (its container: {root}); "
                          "an input is never written to: choose an output outside it")


def claim(target: Path | zarr.Group, record: dict, overwrite: bool, volume: Volume) -> zarr.Group | None:
    """The existing output to resume, or ``None`` to create one (after clearing it with ``overwrite``);
    ``VolumeError`` when it must not be touched."""
    where = target if isinstance(target, Path) else f"Zarr group {target.store_path}"
    if isinstance(target, Path):
        try:
            existing = open_output(target)
        except VolumeError:
            if not overwrite:
                raise
            remove_output(target)
            return None
    else:
        existing = target if (list(target.keys()) or dict(target.attrs)) else None
    if existing is None:
        return None
    found = record_of(existing)
    if found is None:
        why = "was not made by napari-alnet"
    elif found.get("complete"):
        why = "is complete"
    elif found.get("run") != record:
        why = (f"was started with other settings {differences(found.get('run') or {}, record)}; resuming would "
               "mix blocks of both runs")
    else:
        return existing
    if not overwrite:
        raise VolumeError(f"{where} exists and {why}; refusing to write over it. To start over: --overwrite "
                          "(overwrite=True) replaces it, or choose another output")
    if isinstance(target, Path):
        remove_output(target)
    else:
        _clear_group(target)
    return None


#: What a full disk mid-run leaves (unlike a TIFF, a volume output keeps its finished blocks for the resume).
DISK_FULL_KEPT = "the blocks finished so far are kept: free some space and run the same command again to continue"


@contextlib.contextmanager
def disk_full_said(path: Path | str, after: str = DISK_FULL_KEPT) -> Iterator[None]:
    """A full disk while writing ``path`` is said in the TIFF path's words (``io.atomic.write_error``: "the disk
    is full (N MB free on ...)"), then ``after``; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise write_error(exc, Path(str(path)), after=after) from exc


def created(target: Path | zarr.Group, create: Callable[[], zarr.Group]) -> zarr.Group:
    """``create()`` a new output at ``target``; a path it fails to fill is removed (nothing half-made is left)."""
    try:
        with disk_full_said(target if isinstance(target, Path) else target.store_path,
                            after="nothing was left at that path: free some space and run again"):
            return create()
    except BaseException:
        if isinstance(target, Path):
            remove_output(target)
        raise


def _clear_group(group: zarr.Group) -> None:
    for name in list(group.keys()):
        del group[name]
    for key in list(group.attrs.keys()):
        del group.attrs[key]


def _spatial(values: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(values) if ndim == 3 else tuple(values[1:])


def new_labels(target: Path | zarr.Group, volume: Volume, plan: BlockPlan, settings: Settings, record: dict,
                width: int) -> zarr.Group:
    dtype = np.uint32 if settings.instances else np.uint8
    props = None if settings.instances else [{"label-value": 1, "class": settings.objects}]
    group = create_output(target, shape=_spatial(plan.shape, volume.ndim), dtype=dtype,
                          chunks=_spatial(plan.chunks, volume.ndim), geometry=volume.geometry,
                          zarr_format=volume.zarr_format, label=True, name=f"{volume.name} labels",
                          record={"version": RECORD_VERSION, "kind": "labels", "complete": False, "run": record},
                          label_properties=props)
    state = group.create_group(STATE)
    state.create_array("blocks", shape=plan.grid, dtype="uint8", chunks=(1, 1, 1), fill_value=0, compressors=None)
    if settings.instances:
        state.create_array("counts", shape=plan.grid, dtype="uint64", chunks=(1, 1, 1), fill_value=0,
                           compressors=None)
        state.create_array("local", shape=plan.shape, dtype="uint32", chunks=plan.chunks, fill_value=0)
    if settings.watershed:
        _new_split(state, plan, settings)
    if plan.cuts_planes:
        state.create_array("context", shape=(plan.shape[0], width), dtype="float32", chunks=(1, width),
                           fill_value=float("nan"), compressors=None)
    return group


def new_probabilities(target: Path | zarr.Group, volume: Volume, plan: BlockPlan, settings: Settings,
                       record: dict) -> zarr.Group:
    encoding = ("uint8: probability = value / 255" if settings.probabilities == "uint8"
                else f"{settings.probabilities}: probability")
    return create_output(target, shape=_spatial(plan.shape, volume.ndim), dtype=settings.probabilities,
                         chunks=_spatial(plan.chunks, volume.ndim), geometry=volume.geometry,
                         zarr_format=volume.zarr_format, label=False, name=f"{volume.name} probabilities",
                         record={"version": RECORD_VERSION, "kind": "probabilities", "encoding": encoding,
                                 "dtype": settings.probabilities, "complete": False, "run": record})


def _new_split(state: zarr.Group, plan: BlockPlan, settings: Settings) -> None:
    """The watershed's arrays: ids like ``local``, counts and done flags per block, and per face axis the ghost
    planes (the axis holds 2 per block, its low and high side; chunks of one plane, so each block writes its own)."""
    state.create_array("split", shape=plan.shape, dtype="uint32", chunks=plan.chunks, fill_value=0)
    for name, dtype in (("split_counts", "uint64"), ("split_blocks", "uint8")):
        state.create_array(name, shape=plan.grid, dtype=dtype, chunks=(1, 1, 1), fill_value=0, compressors=None)
    for axis in FACE_AXES[settings.instances]:
        shape, chunks = list(plan.shape), list(plan.chunks)
        shape[axis], chunks[axis] = 2 * plan.grid[axis], 1
        state.create_array(f"ghost{axis}", shape=tuple(shape), dtype="uint32", chunks=tuple(chunks), fill_value=0)


def open_arrays(labels: zarr.Group, prob: zarr.Group | None) -> Outputs:
    state = labels[STATE]
    names = set(state.array_keys())
    outputs = Outputs(labels["0"], state["blocks"], prob["0"] if prob is not None else None,
                      state["context"] if "context" in names else None, state["local"] if "local" in names else None,
                      state["counts"] if "counts" in names else None)
    if "split" in names:
        outputs.split, outputs.split_counts = state["split"], state["split_counts"]
        outputs.split_state = state["split_blocks"]
        outputs.ghosts = tuple(state[f"ghost{a}"] if f"ghost{a}" in names else None for a in range(3))
    return outputs


def id_outputs(outputs: Outputs) -> Outputs:
    """What the merge and relabel phases read as the blocks' ids: the watershed's where it ran, else ``local``."""
    return outputs if outputs.split is None else replace(outputs, local=outputs.split, counts=outputs.split_counts)


def read_state(array: zarr.Array) -> np.ndarray:
    """A state array as NumPy; chunks that cannot be read count as never written (fill value)."""
    try:
        return np.asarray(array[...])
    except Exception:
        out = np.full(array.shape, array.fill_value, array.dtype)
        for index in np.ndindex(*array.cdata_shape):
            region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.chunks, strict=True))
            with contextlib.suppress(Exception):
                out[region] = array[region]
        return out


def claim_output_writer(target: Path | zarr.Group) -> Path | None:
    """This run as the one writer of a path output (``io.atomic.claim_writer``); a second run is refused saying
    it kept the first one's work."""
    if not isinstance(target, Path):
        return None
    try:
        return claim_writer(target)
    except FileExistsError as exc:
        raise VolumeError(f"{exc}; kept that run's output and wrote nothing: wait for it to end (if it does not "
                          "finish, run the same command again to resume it; if no run is writing it any more, "
                          f"delete {writer_lock(target)})") from None
