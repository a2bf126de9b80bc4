"""Reading the region to segment from an image layer and writing results into output layers."""

from __future__ import annotations

from collections.abc import Sequence

import napari
import numpy as np
from napari.layers import Image, Labels

Region = tuple[int | slice, ...]

CURRENT_SLICE = "current slice"
FIELD_OF_VIEW = "field of view"
Z_RANGE = "z-range"
WHOLE_STACK = "whole stack"
SCOPES = (CURRENT_SLICE, FIELD_OF_VIEW, Z_RANGE, WHOLE_STACK)


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


def read_region(layer: Image, region: Region) -> np.ndarray:
    """A NumPy copy of ``layer``'s data at ``region`` (safe to hand to a worker thread)."""
    return np.array(base_data(layer)[region])


def check_pixels(image: np.ndarray, name: str) -> None:
    """Refuse empty or constant images (nothing to segment)."""
    if image.size == 0:
        raise InputProblem(f"layer {name!r} has no pixels in the chosen region; choose another slice or layer")
    lo, hi = np.nanmin(image), np.nanmax(image)
    if lo == hi:
        raise InputProblem(f"layer {name!r} is constant (every pixel is {lo}) in the chosen region; there is "
                           "nothing to segment; check that the right layer and slice are chosen")


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
    return viewer.add_image(data, colormap="magma", blending="additive", contrast_limits=(0.0, 1.0), **kwargs)


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
