"""A source's identity for resuming: a fingerprint that changes when a volume's data or metadata change.

``fingerprint(volume)`` hashes (BLAKE2b) the source's shape, dtype, chunks and attributes, the metadata
documents at its path (``zarr.json``, ``.zarray``, ``.zattrs``, ``.zgroup``, N5 ``attributes.json``; a file's
size), and pixel data: **all** of an in-memory NumPy array, else a deterministic sample of chunks (``SAMPLE_CHUNKS``
spread evenly in C order over the chunk grid, first and last included, each read up to ``SAMPLE_EXTENT`` voxels from
its origin; of a dask array given as such only its first chunk, which the first block reads anyway: computing a
lazy graph's chunks can cost what segmenting them costs). What it catches: another array or store, any change of
shape, dtype, chunking, metadata or attributes, and edits of the sampled chunks. What it cannot: an edit confined
to chunks (or parts of chunks) outside the sample of a lazily read source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dask.array as da
import numpy as np

from .volumes import Volume

#: Chunks read for the fingerprint of a lazily read (Zarr, N5, TIFF, dask) source.
SAMPLE_CHUNKS = 16
#: The most (z, y, x) voxels read of each sampled chunk, from its origin.
SAMPLE_EXTENT = (4, 512, 512)
#: Metadata documents hashed where they exist at the source's path.
METADATA_FILES = ("zarr.json", ".zarray", ".zattrs", ".zgroup", "attributes.json")


def fingerprint(volume: Volume) -> str:
    """A hex digest identifying ``volume``'s data and metadata (see the module docstring for what it covers)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_description(volume).encode())
    if volume.path is not None:
        h.update(_path_metadata(Path(volume.path)))
    raw = volume.reader.raw if volume.path is None else None
    if isinstance(raw, np.ndarray):
        h.update(b"all")
        h.update(np.ascontiguousarray(raw).data)
    else:
        count = 1 if isinstance(raw, da.Array) else SAMPLE_CHUNKS  # a lazy graph's chunks cost what blocks cost
        for region in sample_regions(volume.shape, volume.chunks, count=count):
            h.update(repr(region).encode())
            h.update(np.ascontiguousarray(volume.reader.read(region)).data)
    return h.hexdigest()


def _description(volume: Volume) -> str:
    """The source's own description (not how this version of the engine reads it, so an upgrade keeps it)."""
    reader = volume.reader
    return json.dumps({"shape": list(reader.raw_shape), "dtype": str(reader.dtype), "chunks": list(volume.chunks),
                       "attrs": volume.attrs}, sort_keys=True, default=str)


def _path_metadata(path: Path) -> bytes:
    if path.is_file():
        return f"file of {path.stat().st_size} bytes".encode()
    out = []
    for name in METADATA_FILES:
        doc = path / name
        if doc.is_file():
            out.append(name.encode() + doc.read_bytes())
    return b"".join(out)


def sample_regions(shape: tuple[int, int, int], chunks: tuple[int, int, int], *, count: int = SAMPLE_CHUNKS,
                   extent: tuple[int, int, int] = SAMPLE_EXTENT) -> list[tuple[slice, slice, slice]]:
    """The (z, y, x) regions the fingerprint reads: ``count`` chunks spread evenly over the chunk grid (C order),
    each clipped to ``extent`` from its origin and to the volume."""
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True))
    total = int(np.prod(grid))
    picks = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64))
    regions = []
    for flat in picks:
        index = np.unravel_index(int(flat), grid)
        regions.append(tuple(slice(int(i) * c, min(int(i) * c + min(c, e), n))
                             for i, c, e, n in zip(index, chunks, extent, shape, strict=True)))
    return regions  # type: ignore[return-value]
