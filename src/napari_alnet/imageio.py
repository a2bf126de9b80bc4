"""Reading images, masks and stacks from disk with clear errors (no Qt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class ImageReadError(ValueError):
    """A file that could not be read as an image; the message names the file."""


def is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """The pixel array of a TIFF/OME-TIFF, PNG or JPEG file (TIFF stacks as (Z, Y, X[, C]))."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageReadError(f"{path}: unsupported file type {path.suffix!r} (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        if is_tiff(path):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from skimage import io

        return np.asarray(io.imread(path))
    except Exception as exc:  # any decoder error means the same thing to the user
        raise ImageReadError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc


def list_images(path: str | Path) -> list[Path]:
    """Image files in a folder (sorted), or the file itself."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise ImageReadError(f"{path}: no such file or folder")
