"""Volumes larger than memory: OME-Zarr (v0.4 / v0.5), plain Zarr (v2 / v3), N5 and TIFF opened lazily, and
OME-Zarr outputs created with ``zarr`` and ``ome-zarr``.

``open_volume`` gives a ``Volume``: the level-0 array as a lazy (Z, Y, X[, C]) dask array (a 2D source has a Z of
one), a picklable ``Reader`` that a Dask worker uses to read any region, and the geometry (axes, scale, units,
translation, chunking, Zarr format) that outputs copy. ``create_output`` makes a standalone OME-Zarr multiscale
image (``image-label`` metadata for labels) with one chunk-aligned array ``0``; nothing here writes Zarr by hand.
"""

from __future__ import annotations

import math
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05

with warnings.catch_warnings():  # ome-zarr 0.18 warns at import about a default argument of its own (Scaler)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import add_metadata, write_multiscales_metadata
from zarr_n5 import ImplicitGroupWrapperStore, N5WrapperStore

from .images import tiff_colour
from .layout import COLOUR_SIZES
from .stack_reader import tiff_pixel_size

#: Suffixes read as Zarr / N5 containers (a directory with Zarr metadata is read as Zarr whatever its name).
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
N5_SUFFIXES = (".n5",)
TIFF_SUFFIXES = (".tif", ".tiff")
#: The attribute under which our outputs record how they were made and whether they are complete.
RECORD_KEY = "napari_alnet"
#: OME-NGFF unit names for the abbreviations TIFF and N5 files use.
UNITS = {"um": "micrometer", "µm": "micrometer", "\\u00B5m": "micrometer", "micron": "micrometer",
         "microns": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
         "pm": "picometer", "angstrom": "angstrom", "Å": "angstrom", "inch": "inch"}
OME_UNITS = {"angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
             "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter",
             "nanometer", "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter",
             "zeptometer", "zettameter"}


class VolumeError(ValueError):
    """A source or an output that cannot be used, with a message saying why and what to do."""


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels sit: spatial ``axes`` ('z', 'y', 'x' or 'y', 'x': the engine's order) and, per
    axis, ``scale``, ``units`` (OME-NGFF names, or ``None``) and ``translation``; ``stored``: the order the source
    declares its spatial axes in (e.g. 'y', 'x', 'z'; empty = the engine's), in which outputs are written."""

    axes: tuple[str, ...] = ("z", "y", "x")
    scale: tuple[float, ...] = (1.0, 1.0, 1.0)
    units: tuple[str | None, ...] = (None, None, None)
    translation: tuple[float, ...] = (0.0, 0.0, 0.0)
    stored: tuple[str, ...] = ()

    @property
    def order(self) -> tuple[int, ...]:
        """For each stored axis, its index in ``axes``."""
        return tuple(self.axes.index(a) for a in self.stored) if self.stored else tuple(range(len(self.axes)))

    def ome_axes(self) -> list[dict[str, str]]:
        return [{"name": self.axes[i], "type": "space", **({"unit": self.units[i]} if self.units[i] else {})}
                for i in self.order]

    def transformations(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"type": "scale", "scale": [float(self.scale[i]) for i in self.order]}]
        if any(self.translation):
            out.append({"type": "translation", "translation": [float(self.translation[i]) for i in self.order]})
        return out


class Reader:
    """Reads regions of a volume's level-0 array as (Z, Y, X[, C]) NumPy arrays; picklable (a Dask worker reopens
    the file from its path, or gets the in-memory array once by scatter).

    ``opener``: a module-level function of ``args`` returning the raw array; ``axes``: for each raw axis, the
    canonical axis it is ('z', 'y', 'x', 'c') or '' for a size-1 axis that is dropped.
    """

    def __init__(self, opener, args: tuple, axes: tuple[str, ...], shape: tuple[int, ...], dtype: np.dtype,
                 raw: Any = None) -> None:
        self.opener, self.args, self.axes, self.dtype = opener, args, tuple(axes), np.dtype(dtype)
        self.raw_shape = tuple(int(s) for s in shape)
        self._raw = raw
        sizes = dict(zip(self.axes, self.raw_shape, strict=True))
        self.shape = (sizes.get("z", 1), sizes["y"], sizes["x"], *((sizes["c"],) if "c" in sizes else ()))
        self.ndim = len(self.shape)

    @property
    def raw(self):
        if self._raw is None:
            self._raw = self.opener(*self.args)
        return self._raw

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.opener is not _in_memory:
            state["_raw"] = None
        return state

    def __getitem__(self, region) -> np.ndarray:
        region = _full_region(region, self.shape)
        wanted = dict(zip(("z", "y", "x", "c"), region, strict=False))
        index = tuple(wanted[a] if a else 0 for a in self.axes)
        part = self.raw[index]
        part = part.compute(scheduler="synchronous") if isinstance(part, da.Array) else np.asarray(part)
        kept = [a for a in self.axes if a]
        order = [kept.index(a) for a in ("z", "y", "x", "c") if a in kept]
        part = np.transpose(part, order) if order != sorted(order) else part
        return part if "z" in kept else part[None]

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        return self[region]


def _full_region(region, shape: tuple[int, ...]) -> tuple[slice, ...]:
    region = region if isinstance(region, tuple) else (region,)
    out = []
    for i, n in enumerate(shape):
        s = region[i] if i < len(region) else slice(None)
        if not isinstance(s, slice):
            raise TypeError("a Reader reads rectangular regions (slices) only")
        out.append(slice(*s.indices(n)[:2]))
    return tuple(out)


@dataclass(frozen=True)
class Volume:
    """A lazily read volume: ``data`` (Z, Y, X[, C]) dask array, ``reader`` for workers, ``geometry`` for outputs,
    source ``chunks`` (z, y, x), ``zarr_format`` the outputs use (2 for a Zarr v2 source, else 3), ``rgb`` (a
    trailing colour axis), ``name`` (the stem of output names) and ``path`` (``None`` for an in-memory array)."""

    data: da.Array
    reader: Reader
    geometry: Geometry
    chunks: tuple[int, int, int]
    zarr_format: int = 3
    rgb: bool = False
    name: str = "volume"
    path: Path | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        return tuple(int(s) for s in self.data.shape[:3])  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the source (2 or 3)."""
        return len(self.geometry.axes)


# --- opening ------------------------------------------------------------------------------------------------------

def is_volume_path(path: str | Path) -> bool:
    """Whether a path is a Zarr or N5 container, or a node inside one (a folder of image files is not)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any(part.lower().endswith((*ZARR_SUFFIXES, *N5_SUFFIXES)) for part in path.parts):
        return True
    return any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")) or _n5_root(path) is not None


def open_volume(source: Any, *, name: str | None = None) -> Volume:
    """A ``Volume`` of a path (OME-Zarr, Zarr array or group, N5, TIFF) or of an array (NumPy, dask, Zarr).

    OME-Zarr multiscales: level 0 is read, with its axes, scale, translation and units. A plain Zarr/N5 array's
    axes are (Y, X), (Z, Y, X) or (Z, Y, X, 3|4). ``VolumeError`` names what is wrong (no such path, a group
    without OME metadata, a dimensionality or dtype that cannot be segmented).
    """
    if isinstance(source, (str, Path)):
        volume = _open_path(Path(source))
    elif isinstance(source, zarr.Group):
        volume = _open_group(source, Path(str(source.store_path)), source.metadata.zarr_format)
    else:
        volume = _open_array(source)
    volume = replace(volume, name=name) if name else volume
    _check_dtype(volume)
    return volume


def _open_path(path: Path) -> Volume:
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    lower = path.name.lower()
    if path.is_file():
        if lower.endswith(TIFF_SUFFIXES):
            return _open_tiff(path)
        raise VolumeError(f"{path}: not a Zarr/N5 container or TIFF file")
    if _n5_root(path) is not None:
        return _open_n5(path)
    try:
        node = zarr.open(zarr.storage.LocalStore(path, read_only=True), mode="r")
    except Exception as exc:
        raise VolumeError(f"{path}: not a readable Zarr array or group ({type(exc).__name__}: {exc})") from exc
    fmt = node.metadata.zarr_format
    if isinstance(node, zarr.Group):
        return _open_group(node, path, fmt)
    names = getattr(node.metadata, "dimension_names", None) or node.attrs.get("_ARRAY_DIMENSIONS")
    axes = _declared_axes(names, tuple(int(n) for n in node.shape), path, "Zarr dimension names")
    return _plain(node, path, fmt, _stem(path), _opener_zarr, (str(path), fmt), axes=axes)


def _stem(path: Path) -> str:
    """Output stem of a source path: the container's name without suffix, plus the dataset path inside it."""
    parts = path.parts
    for i in range(len(parts) - 1, -1, -1):
        low = parts[i].lower()
        for suffix in (*ZARR_SUFFIXES, *N5_SUFFIXES):
            if low.endswith(suffix):
                inner = "_".join(parts[i + 1:])
                stem = parts[i][: -len(suffix)]
                return f"{stem}_{inner}" if inner else stem
    return path.stem


def _opener_zarr(path: str, fmt: int):
    return zarr.open_array(zarr.storage.LocalStore(path, read_only=True), mode="r", zarr_format=fmt)


def _in_memory(array):
    return array


def _open_array(array: Any) -> Volume:
    if isinstance(array, zarr.Array):
        fmt = array.metadata.zarr_format
        return _plain(array, None, fmt, "volume", _in_memory, (array,))
    if not isinstance(array, da.Array):
        array = np.asarray(array)
    return _plain(array, None, 3, "volume", _in_memory, (array,))


def _plain_axes(shape: tuple[int, ...], where: str) -> tuple[str, ...]:
    if len(shape) == 2:
        return ("y", "x")
    if len(shape) == 3:
        return ("z", "y", "x")
    if len(shape) == 4 and shape[-1] in COLOUR_SIZES:
        return ("z", "y", "x", "c")
    raise VolumeError(f"{where}: an array of shape {tuple(shape)} ({len(shape)} dimensions) cannot be segmented: "
                      "expected (Y, X), (Z, Y, X) or (Z, Y, X, 3|4) (an OME-Zarr image says its axes in its "
                      "metadata; a plain array must have one of these shapes)")


def _declared_axes(names, shape: tuple[int, ...], path: Path, what: str) -> tuple[str, ...] | None:
    """Each raw axis's role from declared names (Zarr v3 ``dimension_names``, xarray's ``_ARRAY_DIMENSIONS``, N5
    ``axes``): 'z', 'y', 'x' by name in any order, 'c'/'channel' of 3 or 4 as colour, '' for another axis of size 1;
    ``None`` when no names are declared or none of them is z, y or x (the shape rule applies); ``VolumeError``
    naming the axes found for anything else."""
    if not isinstance(names, (list, tuple)) or len(names) != len(shape) or any(n is None for n in names):
        return None
    low = tuple(str(n).lower() for n in names)
    if not set(low) & {"z", "y", "x"}:
        return None
    roles = []
    for name, size in zip(low, shape, strict=True):
        if name in ("z", "y", "x"):
            roles.append(name)
        elif name in ("c", "channel") and size in COLOUR_SIZES and "c" not in roles:
            roles.append("c")
        elif size == 1:
            roles.append("")
        else:
            raise VolumeError(f"{path}: its {what} are {list(names)} (shape {shape}); the {name!r} axis has {size} "
                              "entries: AL-Net reads z, y and x (any order), one colour axis 'c' of 3 or 4 and "
                              "other axes of size 1 only")
    _zyx_names(tuple(r for r in roles if r and r != "c"), path, what)
    return tuple(roles)


def _plain(raw, path: Path | None, fmt: int, stem: str, opener, args: tuple, attrs: dict | None = None,
           axes: tuple[str, ...] | None = None, geometry: Geometry | None = None) -> Volume:
    where = str(path) if path is not None else "the array"
    shape = tuple(int(s) for s in raw.shape)
    _check_dtype_of(raw.dtype, where)
    axes = axes or _plain_axes(shape, where)
    stored = tuple(a for a in axes if a in ("z", "y", "x"))
    spatial = tuple(a for a in ("z", "y", "x") if a in stored)
    if geometry is None:  # outputs are written in the order the source declares (OME, N5, TIFF say theirs)
        geometry = Geometry(spatial, (1.0,) * len(spatial), (None,) * len(spatial), (0.0,) * len(spatial),
                            stored if stored != spatial else ())
    reader = Reader(opener, args, axes, shape, raw.dtype, raw=raw)
    chunks = _chunks_of(raw, axes)
    if isinstance(raw, da.Array) and opener is _in_memory:
        data = _canonical_dask(raw, axes)
    else:
        data = da.from_array(reader, chunks=(*chunks, *reader.shape[3:]), asarray=True, fancy=False,
                             name=f"alnet-volume-{stem}-{id(reader)}")
    return Volume(data, reader, geometry, chunks, fmt if fmt in (2, 3) else 3, "c" in axes, stem, path, attrs or {})


def _canonical_dask(array: da.Array, axes: tuple[str, ...]) -> da.Array:
    index = tuple(slice(None) if a else 0 for a in axes)
    array = array[index]
    kept = [a for a in axes if a]
    order = [kept.index(a) for a in ("z", "y", "x", "c") if a in kept]
    array = array.transpose(order)
    return array if "z" in kept else array[None]


def _chunks_of(raw, axes: tuple[str, ...]) -> tuple[int, int, int]:
    if isinstance(raw, da.Array):
        chunks = tuple(c[0] for c in raw.chunks)
    elif hasattr(raw, "chunks") and isinstance(raw.chunks, tuple):
        chunks = tuple(int(c) for c in raw.chunks)
    else:
        chunks = tuple(int(s) for s in raw.shape)
    sizes = dict(zip(axes, chunks, strict=True))
    return (int(sizes.get("z", 1)), int(sizes["y"]), int(sizes["x"]))


def _check_dtype_of(dtype, where: str) -> None:
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise VolumeError(f"{where}: dtype {dtype} is not a real numeric type; AL-Net segments integer or float "
                          "images") from exc
    if dtype.kind == "b":
        return
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise VolumeError(f"{where}: dtype {dtype} is not a real numeric type; AL-Net segments integer or float "
                          "images (convert it first, e.g. to uint8 or float32)")


def _check_dtype(volume: Volume) -> None:
    _check_dtype_of(volume.reader.dtype, str(volume.path) if volume.path else "the array")


# --- OME-Zarr groups ----------------------------------------------------------------------------------------------

def ome_attrs(group: zarr.Group) -> dict[str, Any]:
    """The OME-NGFF attributes of a group (v0.5: under ``ome``; v0.4: at the top level)."""
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", {})) if "ome" in attrs else attrs


def _open_group(group: zarr.Group, path: Path, fmt: int) -> Volume:
    multiscales = ome_attrs(group).get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in group.arrays())
        hint = (f"; it holds the array(s) {', '.join(arrays[:6])}: give the path of one (e.g. {path / arrays[0]}) to "
                "segment it as a plain array" if arrays else "; it holds no arrays")
        raise VolumeError(f"{path}: a Zarr group without OME-NGFF metadata (missing OME 'multiscales' "
                          f"attributes){hint}")
    ms = multiscales[0]
    try:
        level = ms["datasets"][0]
        array = group[level["path"]]
    except (KeyError, IndexError, TypeError) as exc:
        raise VolumeError(f"{path}: broken OME-NGFF metadata: multiscales[0].datasets[0] does not name an array "
                          f"of the group ({type(exc).__name__}: {exc})") from exc
    names, geometry = _ome_geometry(ms, level, len(array.shape), path)
    axes = _axes_roles(names, tuple(int(s) for s in array.shape), path)
    return _plain(array, path, fmt, _stem(path), _opener_zarr, (str(path / level["path"]), fmt),
                  attrs=dict(group.attrs), axes=axes, geometry=geometry)


def _ome_geometry(ms: dict, level: dict, ndim: int, path: Path) -> tuple[list[dict], Geometry]:
    axes = ms.get("axes")
    if axes is None:
        axes = [{"name": n, "type": "space"} for n in ("tczyx"[-ndim:] if ndim <= 5 else [])]
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]
    if len(axes) != ndim:
        raise VolumeError(f"{path}: OME-NGFF metadata lists {len(axes)} axes for an array of {ndim} dimensions")
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for transforms in (level.get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale" and "scale" in t:
                scale = scale * np.asarray(t["scale"], float)
                translation = translation * np.asarray(t["scale"], float)
            elif t.get("type") == "translation" and "translation" in t:
                translation = translation + np.asarray(t["translation"], float)
    spatial = _spatial_axes(axes)
    names = _zyx_names(tuple(str(axes[i]["name"]).lower() for i in spatial), path, "OME-NGFF axes")
    by_name = {n: i for n, i in zip(names, spatial, strict=True)}
    zyx = tuple(a for a in ("z", "y", "x") if a in names)
    return axes, Geometry(zyx, tuple(float(scale[by_name[a]]) for a in zyx),
                          tuple(_unit(axes[by_name[a]].get("unit")) for a in zyx),
                          tuple(float(translation[by_name[a]]) for a in zyx), names if names != zyx else ())


def _spatial_axes(axes: list[dict]) -> list[int]:
    return [i for i, a in enumerate(axes) if a.get("type", "space") == "space" or str(a["name"]).lower() in "zyx"]


def _zyx_names(names: tuple[str, ...], path: Path, what: str) -> tuple[str, ...]:
    """``names`` of the spatial axes when they are the names z, y, x (in any order; y and x for 2D); else
    ``VolumeError`` naming what was found and what is supported."""
    if len(names) not in (2, 3):
        raise VolumeError(f"{path}: has {len(names)} spatial axes ({', '.join(names) or 'none'}); AL-Net segments "
                          "2D images and 3D volumes (Z, Y, X)")
    if sorted(names) != sorted(("z", "y", "x")[-len(names):]):
        raise VolumeError(f"{path}: its {what} name the spatial axes {list(names)}; AL-Net reads axes named "
                          f"{'z, y and x' if len(names) == 3 else 'y and x'} (in any order, each once): rename them "
                          "in the metadata")
    return names


def _axes_roles(axes: list[dict], shape: tuple[int, ...], path: Path) -> tuple[str, ...]:
    """Each raw axis as 'z', 'y', 'x', 'c' or '' (a size-1 axis dropped); ``VolumeError`` for what cannot be."""
    roles = [""] * len(axes)
    for i in _spatial_axes(axes):
        roles[i] = str(axes[i]["name"]).lower()
    for i, a in enumerate(axes):
        if roles[i] or shape[i] == 1:
            continue
        kind = a.get("type", a["name"])
        if kind in ("channel", "c") and shape[i] in COLOUR_SIZES and "c" not in roles:
            roles[i] = "c"
            continue
        raise VolumeError(f"{path}: its {a['name']!r} axis ({kind}) has {shape[i]} entries; AL-Net segments one "
                          f"grayscale or RGB volume at a time (axes {[x['name'] for x in axes]}, shape {shape}): "
                          "write the one to segment as its own array")
    return tuple(roles)


def _unit(unit: str | None) -> str | None:
    if not unit:
        return None
    unit = UNITS.get(str(unit), str(unit))
    return unit if unit in OME_UNITS else None


# --- N5 and TIFF --------------------------------------------------------------------------------------------------

def _n5_root(path: Path) -> Path | None:
    """The N5 container holding ``path`` (a directory whose attributes.json has an ``n5`` version), or ``None``."""
    for candidate in (path, *path.parents):
        meta = candidate / "attributes.json"
        if meta.is_file() and (candidate == path or candidate.name.lower().endswith(N5_SUFFIXES)):
            text = meta.read_text(errors="replace")
            if '"n5"' in text or candidate.name.lower().endswith(N5_SUFFIXES):
                return candidate
        if candidate.name.lower().endswith(N5_SUFFIXES):
            return candidate
    return None


def _opener_n5(root: str, inner: str):
    store = ImplicitGroupWrapperStore(N5WrapperStore(zarr.storage.LocalStore(root, read_only=True)))
    node = zarr.open(store, mode="r", path=inner) if inner else zarr.open(store, mode="r")
    return node


def _open_n5(path: Path) -> Volume:
    root = _n5_root(path)
    inner = path.relative_to(root).as_posix() if path != root else ""
    inner = "" if inner == "." else inner
    try:
        node = _opener_n5(str(root), inner)
    except Exception as exc:
        raise VolumeError(f"{path}: not a readable N5 dataset ({type(exc).__name__}: {exc})") from exc
    if isinstance(node, zarr.Group):
        names = sorted(n for n, _ in node.arrays())
        if "s0" in names:  # an N5 multiscale group: segment its full-resolution level
            return _open_n5(path / "s0")
        raise VolumeError(f"{path}: an N5 group, not a dataset (missing OME/multiscale metadata); "
                          + (f"give one of its datasets, e.g. {path / names[0]}" if names else "it holds no datasets"))
    attrs = dict(node.attrs)
    ndim = len(node.shape)
    shape = tuple(int(n) for n in node.shape)
    named = attrs.get("axes", attrs.get("dimension_names"))
    axes = (_declared_axes(named, shape, path, "N5 'axes' attribute")
            or tuple(reversed(_plain_axes(tuple(reversed(shape)), str(path)))))  # N5 lists dimensions x first
    geometry = _n5_geometry(attrs, ndim, axes)
    stored = tuple(a for a in reversed(axes) if a in ("z", "y", "x"))  # the C order of N5's x-first listing
    if stored != geometry.axes:
        geometry = replace(geometry, stored=stored)
    return _plain(node, path, 3, _stem(path), _opener_n5, (str(root), inner), attrs=attrs, axes=axes,
                  geometry=geometry)


def _n5_geometry(attrs: dict, ndim: int, axes: tuple[str, ...]) -> Geometry:
    """Pixel size from N5 ``resolution``/``units`` or ``pixelResolution`` (both x first)."""
    res, units = attrs.get("resolution"), attrs.get("units")
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, dict):
        res = pixel.get("dimensions", res)
        units = [pixel.get("unit")] * ndim if pixel.get("unit") else units
    spatial = [a for a in axes if a in ("z", "y", "x")]
    zyx = [a for a in ("z", "y", "x") if a in spatial]
    scale = dict(zip(axes, [float(r) for r in res], strict=False)) if isinstance(res, list) else {}
    unit = dict(zip(axes, units, strict=False)) if isinstance(units, list) else {}
    return Geometry(tuple(zyx), tuple(scale.get(a, 1.0) for a in zyx), tuple(_unit(unit.get(a)) for a in zyx),
                    (0.0,) * len(zyx))


def _opener_tiff(path: str, series: int):
    store = tifffile.imread(path, aszarr=True, series=series, level=0)
    return zarr.open_array(store, mode="r")


def _open_tiff(path: Path) -> Volume:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            tiff_axes, shape, size = series.axes, tuple(series.shape), tiff_pixel_size(tif)
            stored = series.keyframe.photometric
            shown = tiff_colour(series.keyframe, path)
        raw = _opener_tiff(str(path), 0)
    except Exception as exc:
        raise VolumeError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc
    if shown is not None:  # a volume is read lazily as stored: only gray and RGB pixels mean what they say
        raise VolumeError(f"{path}: its pixels are stored as {stored.name} (a viewer shows them converted); a TIFF "
                          "volume written to Zarr is read as stored, so save it as grayscale or RGB first, or "
                          "segment it into a TIFF output (which converts it)")
    axes = _tiff_roles(tiff_axes, shape, path)
    spatial = tuple(a for a in ("z", "y", "x") if a in axes)
    values = {"z": size.z, "y": size.y, "x": size.x}
    unit = _unit(size.unit) if size.unit else None
    stored = tuple(a for a in axes if a in ("z", "y", "x"))
    geometry = Geometry(spatial, tuple(float(values[a] or 1.0) for a in spatial),
                        tuple(unit if values[a] else None for a in spatial), (0.0,) * len(spatial),
                        stored if stored != spatial else ())
    return _plain(raw, path, 3, path.name.split(".")[0], _opener_tiff, (str(path), 0), axes=axes,
                  geometry=geometry)


def _tiff_roles(tiff_axes: str, shape: tuple[int, ...], path: Path) -> tuple[str, ...]:
    roles = []
    for a, n in zip(tiff_axes, shape, strict=True):
        if a in "YX":
            roles.append(a.lower())
        elif a in "SC" and n in COLOUR_SIZES and "c" not in roles:
            roles.append("c")
        elif n == 1:
            roles.append("")
        elif "z" not in roles:
            roles.append("z")
        else:
            raise VolumeError(f"{path}: TIFF axes {tiff_axes!r} (shape {shape}) have more than one axis to stack "
                              "along; save one volume per file")
    return tuple(roles)


# --- outputs ------------------------------------------------------------------------------------------------------

def ome_format(zarr_format: int):
    """The OME-NGFF version written with a Zarr format: 0.4 with v2, 0.5 with v3."""
    return FormatV04() if zarr_format == 2 else FormatV05()


def create_output(path: str | Path | zarr.Group, *, shape: tuple[int, ...], dtype, chunks: tuple[int, ...],
                  geometry: Geometry, zarr_format: int = 3, label: bool = True, name: str = "labels",
                  record: dict[str, Any] | None = None, label_properties: list[dict] | None = None) -> zarr.Group:
    """A new OME-Zarr multiscale image (one level, array ``0`` of ``shape``/``dtype``/``chunks``, fill 0) at
    ``path`` (which must not exist) or in an empty group, with ``geometry``'s axes and scale; ``label`` adds
    ``image-label`` metadata; ``record`` goes under the ``napari_alnet`` attribute."""
    if isinstance(path, zarr.Group):
        group = path
        zarr_format = group.metadata.zarr_format
    else:
        group = zarr.open_group(zarr.storage.LocalStore(Path(path)), mode="w-", zarr_format=zarr_format)
    fmt = ome_format(zarr_format)
    names = [geometry.axes[i] for i in geometry.order]  # the source's declared order (``put_region`` permutes)
    extra = {"dimension_names": names} if zarr_format == 3 else {"attributes": {"_ARRAY_DIMENSIONS": names}}
    shape, chunks = (tuple(values[i] for i in geometry.order) for values in (shape, chunks))
    group.create_array("0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0, overwrite=True, **extra)
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": geometry.transformations()}],
                               fmt=fmt, axes=geometry.ome_axes(), name=name)
    if label:
        image_label: dict[str, Any] = {"version": fmt.version}
        if label_properties:
            image_label["properties"] = label_properties
        add_metadata(group, {"image-label": image_label}, fmt=fmt)
    if record is not None:
        group.attrs[RECORD_KEY] = record
    return group


def stored_order(array: zarr.Array) -> tuple[int, ...] | None:
    """For each axis of an output array, its index in the engine's (Z, Y, X) (or (Y, X)) order, from its dimension
    names; ``None`` when it is stored in that order (or names none)."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    engine = ("z", "y", "x")[-array.ndim:]
    if not names or tuple(names) == engine or sorted(names) != sorted(engine):
        return None
    return tuple(engine.index(n) for n in names)


def put_region(array: zarr.Array, region: tuple[slice, slice, slice], data: np.ndarray) -> None:
    """Write a (z, y, x) block into an output array (its only slice into a 2D one), in the array's stored order."""
    if array.ndim == 2:
        region, data = region[1:], data[0]
    order = stored_order(array)
    if order is not None:
        region, data = tuple(region[i] for i in order), np.transpose(data, order)
    array[region] = data


def get_region(array: zarr.Array, region: tuple[slice, slice, slice]) -> np.ndarray:
    """The (z, y, x) block of an output array at ``region`` (engine order), whatever order it is stored in."""
    spatial = region[1:] if array.ndim == 2 else region
    order = stored_order(array) or tuple(range(array.ndim))
    out = np.transpose(array[tuple(spatial[i] for i in order)], np.argsort(order))
    return out[None] if array.ndim == 2 else out


def open_output(path: str | Path) -> zarr.Group | None:
    """The Zarr group at ``path`` for appending, ``None`` when nothing is there; ``VolumeError`` when something
    that is not a Zarr group is."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
    except Exception as exc:
        raise VolumeError(f"{path} exists and is not a Zarr group ({type(exc).__name__}); refusing to write "
                          "there (remove it, or choose another output)") from exc


def record_of(group: zarr.Group) -> dict[str, Any] | None:
    """What we recorded in an output (``None``: not made by napari-alnet)."""
    record = group.attrs.get(RECORD_KEY)
    return dict(record) if isinstance(record, dict) else None


def remove_output(path: str | Path) -> None:
    """Delete an output store (a folder) so it can be written anew (``--overwrite``)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def voxel_count(shape: tuple[int, ...]) -> int:
    return math.prod(int(s) for s in shape)
