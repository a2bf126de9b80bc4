"""Reading image files slice by slice (TIFF stacks page by page, never whole) with their physical pixel size."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .images import IMAGE_SUFFIXES, ImageReadError, is_tiff, read_image
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


def open_slices(path: str | Path) -> SliceReader:
    """A ``SliceReader`` for a TIFF/OME-TIFF (pages read on demand), PNG or JPEG; ``ImageReadError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageReadError(f"{path}: unsupported file type {path.suffix!r} (expected {', '.join(IMAGE_SUFFIXES)})")
    if is_tiff(path):
        return _open_tiff(path)
    image = read_image(path)
    if image.ndim == 3 and image.shape[-1] == 2:  # gray + alpha
        image = image[..., 0]
    if not is_plane(image.shape):
        raise ImageReadError(f"{path}: unsupported image shape {image.shape} (expected gray or RGB(A))")
    return SliceReader(path, 1, image.shape, image.dtype, image.ndim == 3, False, lambda _i: image)


def _layout(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[int, bool, str]:
    """(slices, rgb, colour axis '' | 'S' | 'C') of a TIFF series; ``ImageReadError`` for other layouts."""
    sizes = dict(zip(axes, shape, strict=True))
    if "Y" not in sizes or "X" not in sizes:
        raise ImageReadError(f"{path}: TIFF series with axes {axes!r} has no Y and X axes")
    colour = ""
    for name in ("S", "C"):
        if sizes.get(name, 1) > 1:
            if sizes[name] not in COLOUR_SIZES or colour:
                raise ImageReadError(f"{path}: has {sizes[name]} channels (axes {axes!r}, shape {shape}); expected "
                                     "grayscale or RGB(A)")
            colour = name
    depth = math.prod(n for a, n in sizes.items() if a not in "YXSC")
    return depth, bool(colour), colour


def _open_tiff(path: Path) -> SliceReader:
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ImageReadError(f"{path}: is not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    try:
        if not tif.series:
            raise ImageReadError(f"{path}: is not a readable TIFF (no image data found)")
        series = tif.series[0]
        axes, shape = series.axes, tuple(series.shape)
        depth, rgb, colour = _layout(path, axes, shape)
        declared = (tif.imagej_metadata or {}).get("images", depth) if tif.is_imagej else depth
        if declared != depth:
            raise ImageReadError(f"{path}: is truncated or corrupt (its ImageJ metadata declares {declared} images, "
                                 f"{depth} can be read)")
        plane_shape = (shape[axes.index("Y")], shape[axes.index("X")], *((shape[axes.index(colour)],) if rgb else ()))
        pages = series.pages
        if colour != "C" and len(pages) == depth and pages[0] is not None and pages[0].axes in ("YX", "YXS", "SYX"):
            def get(i: int) -> np.ndarray:  # one page per slice: read on demand
                page = pages[i]
                plane = page.asarray()
                return np.moveaxis(plane, 0, -1) if page.axes == "SYX" else plane
        else:
            get = _as_stack(tif, series, axes, colour).__getitem__
        is_stack = any(a not in "YXSC" for a in axes)
        return SliceReader(path, depth, plane_shape, series.dtype, rgb, is_stack, get, tiff_pixel_size(tif),
                           tif.close)
    except ImageReadError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise ImageReadError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc


def _as_stack(tif, series, axes: str, colour: str) -> np.ndarray:
    """(Z, Y, X[, C]) view of a series stored otherwise than one page per slice (memory-mapped when possible)."""
    try:
        data = tifffile.memmap(tif.filehandle.path, series=0, mode="r")
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


def count_slices(path: Path) -> int:
    """Number of slices of an image file (1 when it cannot be told cheaply)."""
    if not is_tiff(Path(path)):
        return 1
    try:
        with open_slices(path) as reader:
            return len(reader)
    except (ImageReadError, OSError):
        return 1
