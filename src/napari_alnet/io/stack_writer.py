"""Writing a TIFF stack slice by slice, atomically: one series, compressed, BigTIFF when large, pixel size kept.

tifffile writes one compressed series from an iterator only, so a background thread runs ``TiffWriter.write`` on
planes handed over through a small queue (memory stays at a few slices). The data go to a hidden temporary file
next to the target, renamed over it by ``finish()``; ``abort()`` (or leaving the ``with`` block on an exception,
Ctrl-C included) removes it, so the target never holds a partial file. ``info`` (a JSON-able dict: what made the
file — model, device, precision, threshold) is recorded in the file: ImageJ's ``Info`` property (Image ▸ Show Info)
for ImageJ hyperstacks, a ``napari_alnet`` entry of tifffile's JSON description otherwise; ``recorded_info`` reads it.

``MappedTiff`` writes an uncompressed TIFF in place through a memory map instead (the same file, byte for byte), so a
plane too large to hold whole is filled piece by piece; also the scratch file of a big plane's probabilities.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import queue
import threading
from pathlib import Path

import numpy as np
import tifffile

from .atomic import publish, temp_path, write_error
from .stack_reader import PixelSize

#: Beyond this many bytes of image data a file is written as BigTIFF.
BIGTIFF_BYTES = 2**32 - 2**25
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)
_RESUNITS = {"um": "MICROMETER", "mm": "MILLIMETER", "cm": "CENTIMETER", "inch": "INCH"}
#: Key of ``info`` in tifffile's JSON description (files that are not ImageJ hyperstacks).
INFO_KEY = "napari_alnet"


class TiffStackWriter:
    """Write a (Z, Y, X) or (Y, X) ``shape`` of ``dtype`` to ``path`` one (Y, X) plane at a time.

    uint8/uint16/float32 stacks are ImageJ hyperstacks (Z spacing and unit in ImageJ metadata); other dtypes and
    BigTIFF files keep the pixel size in resolution tags and tifffile's JSON metadata. ``compress``: zlib.
    ``info``: a JSON-able dict recorded in the file (see ``recorded_info``).
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype, pixel_size: PixelSize = PixelSize(),
                 compress: bool = True, info: dict | None = None) -> None:
        self.path = Path(path)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.planes = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        self.written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self.tmp = temp_path(self.path)
        self._options = _options(self.shape, self.dtype, pixel_size, compress, info)
        self._thread = threading.Thread(target=self._run, name=f"write {self.path.name}", daemon=True)
        self._thread.start()

    def _planes(self):
        for _ in range(self.planes):
            while True:
                if self._cancel.is_set():
                    raise _Cancelled
                try:
                    yield self._queue.get(timeout=0.1)
                    break
                except queue.Empty:
                    continue

    def _run(self) -> None:
        try:
            bigtiff = self._options.pop("bigtiff")
            imagej = self._options.pop("imagej")
            with tifffile.TiffWriter(self.tmp, bigtiff=bigtiff, imagej=imagej) as tif:
                tif.write(self._planes(), shape=self.shape, dtype=self.dtype, photometric="minisblack",
                          maxworkers=1, **self._options)
        except BaseException as exc:  # reported to the writing thread
            self._error = exc

    def write(self, plane: np.ndarray) -> None:
        """Queue the next (Y, X) plane (blocks while two planes are pending)."""
        plane = np.ascontiguousarray(plane, self.dtype)
        if plane.shape != self.shape[-2:]:
            raise ValueError(f"{self.path}: plane shape {plane.shape} does not match {self.shape[-2:]}")
        if self.written >= self.planes:
            raise ValueError(f"{self.path}: all {self.planes} planes are already written")
        while True:
            self._raise_error()
            try:
                self._queue.put(plane, timeout=0.1)
                break
            except queue.Full:
                continue
        self.written += 1

    def finish(self, *, overwrite: bool = True) -> Path:
        """Wait for the data, then move the temporary file to ``path`` (``overwrite=False``: never over a file
        that exists, see ``atomic.publish``); returns ``path``."""
        if self.written != self.planes:
            self.abort()
            raise ValueError(f"{self.path}: only {self.written} of {self.planes} planes were written")
        self._thread.join()
        try:
            self._raise_error()
            publish(self.tmp, self.path, overwrite=overwrite)
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the temporary file (the target is left as it was)."""
        self._cancel.set()
        self._thread.join(timeout=30)
        self.tmp.unlink(missing_ok=True)

    def _raise_error(self) -> None:
        if self._error is not None and not isinstance(self._error, _Cancelled):
            raise write_error(self._error, self.path) from self._error
        if not self._thread.is_alive() and self.written < self.planes and self._error is None:
            raise OSError(f"{self.path}: the writer stopped early")

    def __enter__(self) -> TiffStackWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


class _Cancelled(Exception):
    pass


class NotContiguous(ValueError):
    """A TIFF whose pixels are not one block of the file (so it cannot be memory-mapped)."""


class MappedTiff:
    """An uncompressed TIFF of ``shape`` (Z, Y, X) or (Y, X) and ``dtype`` written in place through a memory map,
    with the tags and metadata ``TiffStackWriter(compress=False)`` writes (byte for byte), published by ``finish()``
    (see ``TiffStackWriter.finish``); ``abort()`` removes it. ``plane(z)`` is a writable (Y, X) view; ``release()``
    drops the pages written so far from this process's memory (they stay in the file); ``band`` reads rows back
    from the file without mapping them. ``NotContiguous`` where the pixels would not be one block of the file."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype, pixel_size: PixelSize = PixelSize(),
                 info: dict | None = None) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.tmp = temp_path(self.path)
        try:
            options = _options(self.shape, self.dtype, pixel_size, False, info)
            nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
            tifffile.imwrite(self.tmp, shape=self.shape, dtype=self.dtype, photometric="minisblack", **options)
            with tifffile.TiffFile(self.tmp) as tif:
                self.offset = tif.series[0].dataoffset  # None where the planes are not one contiguous block
            if self.offset is None:
                raise NotContiguous(f"{self.path}: a {self.shape} {self.dtype} TIFF is not one block of pixels")
            with open(self.tmp, "r+b") as fh:
                if hasattr(os, "posix_fallocate"):  # a full disk fails here, not as SIGBUS in a mapped write
                    os.posix_fallocate(fh.fileno(), 0, self.offset + nbytes)
                self._map = mmap.mmap(fh.fileno(), 0)
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            raise write_error(exc, self.path) from exc
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        self.array = np.ndarray(self.shape, self.dtype, buffer=self._map, offset=self.offset)

    def plane(self, z: int) -> np.ndarray:
        return self.array[z] if len(self.shape) == 3 else self.array

    def band(self, z: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of plane ``z``, read from the file (a new array)."""
        width = self.shape[-1]
        first = (z * self.shape[-2] if len(self.shape) == 3 else 0) + start
        return np.fromfile(self.tmp, self.dtype, count=(stop - start) * width,
                           offset=self.offset + first * width * self.dtype.itemsize).reshape(-1, width)

    def release(self) -> None:
        """Unmap the pages written so far (written back by the system; later reads come from the file)."""
        if self.array is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def finish(self, *, overwrite: bool = True) -> Path:
        try:
            self._map.flush()
            self._close()
            publish(self.tmp, self.path, overwrite=overwrite)
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        self._close()
        self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        self.array = None
        with contextlib.suppress(BufferError):  # a caller still holds a view: the map closes when it goes
            self._map.close()


def _options(shape: tuple[int, ...], dtype: np.dtype, px: PixelSize, compress: bool, info: dict | None = None) -> dict:
    bigtiff = int(np.prod(shape)) * dtype.itemsize > BIGTIFF_BYTES
    imagej = dtype.type in _IMAGEJ_DTYPES and not bigtiff
    options: dict = {"bigtiff": bigtiff, "imagej": imagej}
    if compress:
        options["compression"] = "zlib"
    axes = "ZYX" if len(shape) == 3 else "YX"
    metadata: dict = {"axes": axes}
    if px.z is not None and len(shape) == 3:
        metadata["spacing"] = px.z
    if px.unit:
        metadata["unit"] = px.unit
    if px.x and px.y:
        options["resolution"] = (1.0 / px.x, 1.0 / px.y)
        if not imagej:
            options["resolutionunit"] = _RESUNITS.get(px.unit, "NONE")
    if info:
        if imagej:
            metadata["Info"] = json.dumps(info, sort_keys=True)
        else:
            metadata[INFO_KEY] = info
    options["metadata"] = metadata
    return options


def recorded_info(path: str | Path) -> dict:
    """The ``info`` a ``TiffStackWriter`` recorded in ``path`` (``{}`` when there is none)."""
    with tifffile.TiffFile(path) as tif:
        if tif.is_imagej:
            text = (tif.imagej_metadata or {}).get("Info")
            try:
                found = json.loads(text) if text else {}
            except ValueError:  # an Info property written by something else
                return {}
            return found if isinstance(found, dict) else {}
        shaped = tif.shaped_metadata[0] if tif.shaped_metadata else {}
        found = shaped.get(INFO_KEY, {})
        return found if isinstance(found, dict) else {}
