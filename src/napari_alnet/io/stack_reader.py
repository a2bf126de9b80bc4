"""Reading image files slice by slice (TIFF stacks page by page, never whole) with their physical pixel size."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .images import ImageReadError, checked_image_file, decode_image, is_tiff, tiff_colour
from .layout import COLOUR_SIZES, is_plane


@dataclass(frozen=True)
class PixelSize:
    """Physical size of a pixel (``x``, ``y``) and the slice spacing (``z``) in ``unit``; ``None`` = unknown."""

    x: float | None = None
    y: float | None = None
    z: float | None = None
    unit: str = ""


class SliceReader:
    """The slices of one image file: ``reader[i]`` is (Y, X) or (Y, X, C) (``rgb``), ``len(reader)`` slices.

    ``is_stack`` tells a (Z, Y, X[, C]) file from a 2D one; ``shape`` is the spatial output shape.
    """

    def __init__(self, path: Path, depth: int, plane_shape: tuple[int, ...], dtype: np.dtype, rgb: bool,
                 is_stack: bool, get, pixel_size: PixelSize = PixelSize(), close=None) -> None:
        self.path, self.depth, self.plane_shape, self.dtype = path, depth, plane_shape, np.dtype(dtype)
        self.rgb, self.is_stack, self.pixel_size = rgb, is_stack, pixel_size
        self._get, self._close = get, close

    @property
    def shape(self) -> tuple[int, ...]:
        yx = self.plane_shape[:2]
        return (self.depth, *yx) if self.is_stack else yx

    def __len__(self) -> int:
        return self.depth

    def __getitem__(self, index: int) -> np.ndarray:
        try:
            plane = np.asarray(self._get(index))
        except Exception as exc:  # a decoder error in one page: name the file and the slice
            raise ImageReadError(f"{self.path}: slice {index} cannot be read ({type(exc).__name__}: {exc})") from exc
        if plane.shape != self.plane_shape:
            raise ImageReadError(f"{self.path}: slice {index} has shape {plane.shape}, expected {self.plane_shape}")
        return plane

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> SliceReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slices(path: str | Path, *, axes: str | None = None, series: int | None = None) -> SliceReader:
    """A ``SliceReader`` for a TIFF/OME-TIFF (pages read on demand), PNG or JPEG; ``ImageReadError`` if unusable.

    ``axes`` overrides how a TIFF's axes read (one letter per axis of the series, e.g. ``"ZYX"`` for a stack that
    tifffile marks as channels; ``C`` or ``S`` = colour, any other letter besides Y and X = the stack axis).
    ``series`` picks one series of a multi-series TIFF (refused without it, naming every series).
    """
    path = checked_image_file(path)
    if is_tiff(path):
        return _open_tiff(path, axes=axes, series=series)
    if axes is not None or series is not None:
        raise ImageReadError(f"{path}: axes and series apply to TIFF files only")
    image = decode_image(path)
    if image.ndim == 3 and image.shape[-1] in (1, 2):  # gray, gray + alpha
        image = image[..., 0]
    if not is_plane(image.shape):
        raise ImageReadError(f"{path}: unsupported image shape {image.shape} (expected gray or RGB(A))")
    return SliceReader(path, 1, image.shape, image.dtype, image.ndim == 3, False, lambda _i: image)


def read_image(path: str | Path, *, axes: str | None = None, series: int | None = None) -> np.ndarray:
    """The pixels of an image file, read by the one input contract of ``open_slices`` (every series and axis of a
    TIFF segmented or refused by name): (Y, X[, C]) for one plane, (Z, Y, X[, C]) for a stack."""
    with open_slices(path, axes=axes, series=series) as reader:
        if not reader.is_stack:
            return reader[0]
        return np.stack([reader[z] for z in range(len(reader))])


@dataclass(frozen=True)
class _TiffLayout:
    """How a TIFF series is read: ``depth`` slices along ``stack_axis`` ('' for one plane), ``colour`` axis."""

    axes: str
    depth: int
    colour: str
    stack_axis: str


_Z_HINT = ("if that axis is Z (tifffile.imwrite(path, stack, imagej=True) stores a 3D array's first axis as "
           "channels unless metadata={'axes': 'ZYX'} is given), pass axes='ZYX' (alnet segment --axes ZYX)")


def _layout(path: Path, axes: str, shape: tuple[int, ...]) -> _TiffLayout:
    """How to read a TIFF series with ``axes``; ``ImageReadError`` naming every axis it cannot segment."""
    sizes = dict(zip(axes, shape, strict=True))
    if "Y" not in sizes or "X" not in sizes:
        raise ImageReadError(f"{path}: TIFF series with axes {axes!r} has no Y and X axes")
    colour = ""
    for name in ("S", "C"):
        if sizes.get(name, 1) > 1:
            if sizes[name] not in COLOUR_SIZES or colour:
                hint = f"; {_Z_HINT}" if name == "C" and not colour else ""
                raise ImageReadError(f"{path}: has {sizes[name]} channels (axes {axes!r}, shape {shape}); expected "
                                     f"grayscale or RGB(A){hint}")
            colour = name
    leading = [a for a in axes if a not in ("Y", "X", colour) and sizes[a] > 1]
    if len(leading) > 1:
        named = ", ".join(f"{a}={sizes[a]}" for a in leading)
        raise ImageReadError(f"{path}: has {len(leading)} axes to stack along ({named}; axes {axes!r}, shape {shape});"
                             f" a stack is segmented along one axis: save one {leading[0]} at a time, or pass axes= "
                             "to say how the file reads")
    depth = math.prod(n for a, n in sizes.items() if a not in ("Y", "X", colour))
    return _TiffLayout(axes, depth, colour, leading[0] if leading else "")


def _series(path: Path, tif, series: int | None):
    if not tif.series:
        raise ImageReadError(f"{path}: is not a readable TIFF (no image data found)")
    if series is None and len(tif.series) > 1:
        listed = "; ".join(f"#{i}: axes {s.axes} shape {tuple(s.shape)}" for i, s in enumerate(tif.series))
        raise ImageReadError(f"{path}: holds {len(tif.series)} image series ({listed}); one is segmented at a time: "
                             "pass series=K (alnet segment --series K) or split the file")
    index = series or 0
    if not 0 <= index < len(tif.series):
        raise ImageReadError(f"{path}: has {len(tif.series)} series; series {index} does not exist")
    return tif.series[index], index


def _checked_axes(path: Path, axes: str | None, found: str, shape: tuple[int, ...]) -> str:
    if axes is None:
        return found
    axes = axes.upper()
    if len(axes) != len(shape) or len(set(axes)) != len(axes) or not axes.isalpha():
        raise ImageReadError(f"{path}: axes {axes!r} do not fit the series (shape {shape}, axes {found!r}): give "
                             f"{len(shape)} distinct letters, e.g. {'ZYX' if len(shape) == 3 else found!r}")
    return axes


def _open_tiff(path: Path, *, axes: str | None, series: int | None) -> SliceReader:
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ImageReadError(f"{path}: is not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        chosen, index = _series(path, tif, series)
        shape = tuple(chosen.shape)
        layout = _layout(path, _checked_axes(path, axes, chosen.axes, shape), shape)
        declared = (tif.imagej_metadata or {}).get("images", layout.depth) if tif.is_imagej else layout.depth
        if declared != layout.depth:
            raise ImageReadError(f"{path}: is truncated or corrupt (its ImageJ metadata declares {declared} images, "
                                 f"{layout.depth} can be read)")
        return _tiff_reader(path, tif, chosen, index, layout)
    except ImageReadError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise ImageReadError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc


def _tiff_reader(path: Path, tif, chosen, index: int, layout: _TiffLayout) -> SliceReader:
    axes, shape, colour = layout.axes, tuple(chosen.shape), layout.colour
    plane_shape = (shape[axes.index("Y")], shape[axes.index("X")], *((shape[axes.index(colour)],) if colour else ()))
    pages = chosen.pages
    if colour != "C" and len(pages) == layout.depth and pages[0] is not None and pages[0].axes in ("YX", "YXS", "SYX"):
        def get(i: int) -> np.ndarray:  # one page per slice: read on demand
            page = pages[i]
            plane = page.asarray()
            return np.moveaxis(plane, 0, -1) if page.axes == "SYX" else plane
    else:
        get = _as_stack(tif, chosen, index, axes, colour).__getitem__
    is_stack = any(a not in ("Y", "X", colour) for a in axes)
    size = tiff_pixel_size(tif)
    if layout.stack_axis == "T":  # frames of a time series: the slice spacing is not a Z spacing
        size = PixelSize(size.x, size.y, None, size.unit)
    dtype, rgb = chosen.dtype, bool(colour)
    shown = tiff_colour(chosen.keyframe, path)
    if shown is not None:  # decoded to what a viewer shows (inverted, through the palette, CMYK to RGB)
        convert, channels = shown
        get, dtype = _converted(get, convert), convert(np.zeros((1, 1, *plane_shape[2:]), chosen.dtype)).dtype
        plane_shape, rgb = (*plane_shape[:2], *((channels,) if channels else ())), bool(channels)
    return SliceReader(path, layout.depth, plane_shape, dtype, rgb, is_stack, get, size, tif.close)


def _converted(get, convert):
    return lambda i: convert(get(i))


def _as_stack(tif, series, index: int, axes: str, colour: str) -> np.ndarray:
    """(Z, Y, X[, C]) view of a series stored otherwise than one page per slice (memory-mapped when possible)."""
    try:
        data = tifffile.memmap(tif.filehandle.path, series=index, mode="r")
    except Exception:
        data = series.asarray()
    lead = [i for i, a in enumerate(axes) if a not in ("Y", "X", colour)]
    trail = [axes.index("Y"), axes.index("X"), *([axes.index(colour)] if colour else [])]
    data = np.transpose(data, lead + trail)
    return data.reshape(-1, *data.shape[len(lead):])


_UNITS = {"micron": "um", "µm": "um", "\\u00B5m": "um", "microns": "um"}


def tiff_pixel_size(tif) -> PixelSize:
    """Pixel size from ImageJ, OME-XML or TIFF resolution tags (whichever the file has)."""
    page = tif.pages.first
    x = y = z = None
    unit = ""
    ome = tif.ome_metadata
    if ome:
        found = {k: float(v) for k, v in re.findall(r'PhysicalSize([XYZ])="([0-9.eE+-]+)"', ome)}
        units = dict(re.findall(r'PhysicalSize([XYZ])Unit="([^"]+)"', ome))
        if found:
            return PixelSize(found.get("X"), found.get("Y"), found.get("Z"), _UNITS.get(units.get("X", "µm"),
                                                                                         units.get("X", "µm")))
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is not None and yres is not None:
        x, y = _inverse(xres.value), _inverse(yres.value)
        resunit = page.tags.get("ResolutionUnit")
        unit = {2: "inch", 3: "cm", 4: "mm", 5: "um"}.get(int(resunit.value) if resunit is not None else 2, "")
    meta = tif.imagej_metadata or (tif.shaped_metadata[0] if tif.shaped_metadata else None) or {}
    if meta.get("unit"):
        unit = _UNITS.get(str(meta["unit"]), str(meta["unit"]))
    if meta.get("spacing") is not None:
        z = float(meta["spacing"])
    if not unit:
        x = y = None  # resolution without a unit (tifffile's default 1 x 1) says nothing physical
    return PixelSize(x, y, z, unit)


def _inverse(value) -> float | None:
    num, den = value if isinstance(value, tuple) else (value, 1)
    return float(den) / float(num) if num else None


def count_slices(path: Path, *, axes: str | None = None, series: int | None = None) -> int:
    """Number of slices of an image file read with ``axes``/``series`` (1 when it cannot be told cheaply)."""
    if not is_tiff(Path(path)):
        return 1
    try:
        with open_slices(path, axes=axes, series=series) as reader:
            return len(reader)
    except (ImageReadError, OSError):
        return 1
