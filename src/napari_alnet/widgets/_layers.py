"""Reading the region to segment from an image layer and writing results into output layers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import napari
import numpy as np
from napari.layers import Image, Labels

from ..engine.progress import Job, Progress
from ..engine.request import CURRENT_SLICE, FIELD_OF_VIEW, WHOLE_STACK, Z_RANGE, Region
from ..io.atomic import move_into_place, staging_directory
from ..io.stack_reader import PixelSize
from ..io.stack_writer import TiffStackWriter
from ..io.volumes import Geometry, create_output


class InputProblem(ValueError):
    """Input the widget refuses; the message says what is wrong and what to do."""


def base_data(layer: Image):
    """The full-resolution data of ``layer`` (level 0 of a multiscale layer)."""
    return layer.data[0] if layer.multiscale else layer.data


def spatial_shape(layer: Image) -> tuple[int, ...]:
    """Shape of ``layer`` without its RGB(A) channel axis."""
    shape = tuple(base_data(layer).shape)
    return shape[:-1] if layer.rgb else shape


def region_for(viewer: napari.Viewer, layer: Image, scope: str, stack_axis: int | None = None,
               z_range: tuple[int, int] | None = None) -> Region:
    """Index of the part of ``layer`` to segment: the displayed YX plane (``current slice``), its visible part
    (``field of view``), slices ``z_range`` = (first, last) inclusive of the stack (``z-range``), or the stack.

    The last two axes are Y, X; leading axes are taken at the viewer's current position, except the stack
    axis for ``whole stack`` / ``z-range`` (axis 0 of a 3D layer; ``stack_axis`` for 4D+ layers, which must be
    chosen).
    """
    shape = spatial_shape(layer)
    nd = len(shape)
    if nd < 2:
        raise InputProblem(f"layer {layer.name!r} is {nd}D; AL-Net needs a 2D image or a stack of 2D images")
    if 0 in shape:
        raise InputProblem(f"layer {layer.name!r} is empty (shape {shape}); choose a layer with pixels")
    point = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)[-nd:]
    index: list[int | slice] = [int(np.clip(round(p), 0, n - 1)) for p, n in zip(point[:-2], shape[:-2], strict=True)]
    yx: list[slice] = [slice(None), slice(None)]
    if scope in (WHOLE_STACK, Z_RANGE) and nd >= 3:
        axis = 0 if nd == 3 else stack_axis
        if axis is None or not 0 <= axis < nd - 2:
            raise InputProblem(f"layer {layer.name!r} has {nd} dimensions {shape} (a time series or multi-channel "
                               "stack?): choose which axis is the stack in 'Stack axis', or segment the current "
                               "slice")
        index[axis] = slice(None) if scope == WHOLE_STACK else _z_slice(layer, shape[axis], z_range)
    elif scope == FIELD_OF_VIEW:
        yx = visible_yx(viewer, layer)
    return (*index, *yx)


def _z_slice(layer: Image, depth: int, z_range: tuple[int, int] | None) -> slice:
    first, last = z_range if z_range is not None else (0, depth - 1)
    if not 0 <= first <= last < depth:
        raise InputProblem(f"layer {layer.name!r}: z-range {first}-{last} is not within its {depth} slices "
                           f"(0-{depth - 1}); set 'z from' <= 'z to'")
    return slice(int(first), int(last) + 1)


def visible_yx(viewer: napari.Viewer, layer: Image) -> list[slice]:
    """The Y and X ranges of ``layer``'s data visible in the canvas (2D view; the whole plane in 3D view)."""
    shape = spatial_shape(layer)
    if viewer.dims.ndisplay != 2:
        return [slice(None), slice(None)]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene.camera
    center = np.asarray(camera.center, float)[-2:]
    half = np.asarray(viewer.canvas.size, float) / (2.0 * float(camera.zoom))
    world = np.asarray(viewer.dims.point, float).copy()
    corners = []
    for corner in (center - half, center + half):
        world[-2:] = corner
        corners.append(np.asarray(layer.world_to_data(world), float)[-2:])
    lo, hi = np.minimum(*corners), np.maximum(*corners)
    out = []
    for a, b, n in zip(lo, hi, shape[-2:], strict=True):
        start, stop = int(np.clip(np.floor(a), 0, n - 1)), int(np.clip(np.ceil(b) + 1, 1, n))
        out.append(slice(start, max(stop, start + 1)))
    return out


def region_shape(layer: Image, region: Region) -> tuple[int, ...]:
    """The spatial shape ``region`` selects (fixed axes dropped)."""
    shape = spatial_shape(layer)
    return tuple(len(range(*r.indices(n))) for r, n in zip(region, shape, strict=True) if isinstance(r, slice))


def upsert(viewer: napari.Viewer, name: str, kind: type[Image] | type[Labels], like: Image, dtype: np.dtype,
           region: Region, values: np.ndarray) -> Image | Labels:
    """Write ``values`` at ``region`` of the output layer ``name`` (same shape, scale and translate as ``like``).

    The layer is created (zeros elsewhere) if missing or of the wrong type/shape/dtype, else updated in place.
    """
    shape = spatial_shape(like)
    layer = next((existing for existing in viewer.layers if existing.name == name), None)
    if not (isinstance(layer, kind) and not layer.multiscale and isinstance(layer.data, np.ndarray)
            and layer.data.shape == shape and layer.data.dtype == dtype):
        layer = None
    data = layer.data if layer is not None else np.zeros(shape, dtype=dtype)
    data[region] = values
    if layer is not None:
        layer.refresh()
        if isinstance(layer, Image):
            layer.reset_contrast_limits()
        return layer
    if name in viewer.layers:  # a same-named layer we cannot reuse: replace it
        viewer.layers.remove(name)
    kwargs = {"name": name, "scale": like.scale, "translate": like.translate}
    if kind is Labels:
        return viewer.add_labels(data, **kwargs)
    return viewer.add_image(data, colormap="magma", blending="additive", contrast_limits=(0.0, 1.0),
                            metadata={OUTPUT_KEY: True}, **kwargs)


def axis_choices(viewer: napari.Viewer, layer: Image | None) -> Sequence[tuple[str, int | None]]:
    """'Stack axis' choices for a 4D+ layer: its leading axes, labelled as in the viewer."""
    if layer is None or len(spatial_shape(layer)) < 4:
        return [("(not needed)", None)]
    shape = spatial_shape(layer)
    labels = list(viewer.dims.axis_labels)[-len(shape):]
    return [("(choose)", None)] + [(f"{labels[i]} ({shape[i]})", i) for i in range(len(shape) - 2)]


def follow_renames(viewer, on_rename, event=None) -> None:
    """Keep ``on_rename`` connected to every layer's name event; call on layers inserted/removed/reordered."""
    for layer in viewer.layers:
        layer.events.name.disconnect(on_rename)
        layer.events.name.connect(on_rename)
    if event is not None and getattr(event, "type", "") == "removed":
        event.value.events.name.disconnect(on_rename)


#: ``layer.metadata`` key marking the image layers the docks make (probabilities, previews): pickers that follow
#: the user's selection leave them alone.
OUTPUT_KEY = "napari_alnet_output"
#: Pixels read from a layer to judge whether it suits a model (a window of the displayed plane).
STATS_WINDOW = 1024


def is_output(layer) -> bool:
    return bool(getattr(layer, "metadata", {}).get(OUTPUT_KEY))


def choose_selected(viewer: napari.Viewer, picker, kind: type) -> None:
    """Put ``picker`` (a layer ComboBox) on the layer the user selected, if it is a ``kind`` layer the docks did
    not make (a newly added layer is selected by napari, so it is chosen too)."""
    layer = viewer.layers.selection.active
    if not isinstance(layer, kind) or is_output(layer) or layer not in viewer.layers or picker.value is layer:
        return
    if all(choice is not layer for choice in picker.choices):
        picker.reset_choices()
    if any(choice is layer for choice in picker.choices):
        picker.value = layer


def pixel_size_nm(layer: Image) -> float | None:
    """The layer's X pixel size in nm, when its units say (``None`` for pixels or unknown units)."""
    units = getattr(layer, "units", None)
    if not units:
        return None
    try:
        return float((layer.scale[-1] * units[-1]).to("nm").magnitude)
    except Exception:  # 'pixel' or a unit pint cannot turn into a length
        return None


def sample_plane(viewer: napari.Viewer, layer: Image) -> np.ndarray | None:
    """Pixels of ``layer`` to judge whether it suits a model, without reading anything napari has not: the
    displayed slice napari already holds, else (a NumPy layer) a window of at most ``STATS_WINDOW``² pixels of the
    displayed plane; ``None`` for a lazy layer not displayed yet."""
    shown = getattr(getattr(getattr(layer, "_slice", None), "image", None), "raw", None)
    if shown is not None and np.size(shown) > 1:
        return np.asarray(shown)
    if layer.multiscale or not isinstance(base_data(layer), np.ndarray):
        return None
    region = list(region_for(viewer, layer, CURRENT_SLICE))
    shape = spatial_shape(layer)
    for axis in (-2, -1):
        start = max(0, (shape[axis] - STATS_WINDOW) // 2)
        region[axis] = slice(start, start + STATS_WINDOW)
    return np.asarray(base_data(layer)[tuple(region)])


def _length_units(layer, nd: int) -> tuple[list[float], str | None]:
    """The layer's last ``nd`` scales in µm and ``'micrometer'`` when its units are lengths, else its scales and
    None."""
    scale = [float(s) for s in layer.scale[-nd:]]
    units = list(getattr(layer, "units", None) or [])[-nd:]
    try:
        return [float((s * u).to("um").magnitude) for s, u in zip(scale, units, strict=True)], "micrometer"
    except Exception:  # pixels or no units: the scale is kept, without a unit
        return scale, None


def labels_targets(layers: Sequence[Labels], path: str | Path) -> list[tuple[Labels, Path]]:
    """Where ``save_labels_job`` writes each layer: the first at ``path`` (.tif/.tiff or .zarr), the others beside
    it as ``<stem>_<i>`` (instances); ``InputProblem`` for another format or a 4D+ layer."""
    path = Path(path)
    suffix = ".zarr" if path.suffix.lower() == ".zarr" else path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".zarr"):
        raise InputProblem(f"{path.name}: save labels as .tif (TIFF) or .zarr (OME-Zarr)")
    out = []
    for i, layer in enumerate(layers):
        if not 2 <= base_data(layer).ndim <= 3:
            raise InputProblem(f"layer {layer.name!r} has {base_data(layer).ndim} dimensions; TIFF and OME-Zarr "
                               "labels are saved for 2D images and 3D stacks (File > Save Selected Layers for others)")
        kind = "" if i == 0 else ("_instances" if "instances" in layer.name else f"_{i}")
        out.append((layer, path if i == 0 else path.with_name(f"{path.stem}{kind}{path.suffix}")))
    return out


def save_labels_job(targets: Sequence[tuple[Labels, Path]], like: Image | Labels) -> Job[list[Path]]:
    """Write each layer's labels (read plane by plane: a lazy layer is never read whole) to its target, TIFF or
    OME-Zarr with the pixel size of ``like`` (the segmented image), each published only once complete (an
    earlier file is replaced)."""
    total = sum(int(np.prod(base_data(layer).shape[:-2])) for layer, _ in targets)
    done, written = 0, []
    for layer, target in targets:
        data = base_data(layer)
        scale, unit = _length_units(like, data.ndim)
        planes = list(np.ndindex(*data.shape[:-2]))
        if target.suffix.lower() == ".zarr":
            writer = _zarr_labels(target, data, scale, unit)
        else:
            writer = _tiff_labels(target, data, scale, unit)
        with writer as write:
            for index in planes:
                write(index, np.asarray(data[index]))
                done += 1
                yield Progress(done, total, f"saving {target.name}: plane {done}/{total}")
        written.append(target)
    return written


@contextmanager
def _tiff_labels(target: Path, data, scale: list[float], unit: str | None) -> Iterator:
    size = PixelSize(x=scale[-1], y=scale[-2], z=scale[0] if len(scale) == 3 else None, unit="um" if unit else "")
    with TiffStackWriter(target, tuple(data.shape), data.dtype, pixel_size=size,
                         info={"source": "napari-alnet Save labels"}) as writer:
        yield lambda _index, plane: writer.write(plane)
        writer.finish()


@contextmanager
def _zarr_labels(target: Path, data, scale: list[float], unit: str | None) -> Iterator:
    axes = ("z", "y", "x")[-data.ndim:]
    geometry = Geometry(axes=axes, scale=tuple(scale), units=(unit,) * data.ndim, translation=(0.0,) * data.ndim)
    chunks = (1, *(min(n, 1024) for n in data.shape[-2:]))[-data.ndim:]
    with staging_directory(target) as staging:
        group = create_output(staging / target.name, shape=tuple(data.shape), dtype=data.dtype, chunks=chunks,
                              geometry=geometry, name=target.stem)
        array = group["0"]

        def write(index, plane):
            array[index] = plane

        yield write
        move_into_place(staging / target.name, target)
