"""Reading images, masks and stacks from disk with clear errors (no Qt).

Colours are decoded to what a viewer shows: PNG/JPEG through Pillow by their colour model (CMYK and YCCK JPEGs,
palette, YCbCr and HSV images to RGB; L/LA/PA/La to gray with the alpha dropped; 1-bit to bool; I;16 to uint16,
I to int32, F to float32), TIFF pages by their photometric interpretation (``tiff_colour``: MINISWHITE inverted,
PALETTE through its colour map, SEPARATED/CMYK to RGB, JPEG-coded YCbCr as tifffile decodes it); any other model
is refused naming it and what to convert to.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

from .layout import has_colour_axis

if TYPE_CHECKING:
    import PIL.Image

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class ImageReadError(ValueError):
    """A file that could not be read as an image; the message names the file."""


def is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def checked_image_file(path: str | Path) -> Path:
    """``path`` if it is an existing file of an image type whose first bytes fit its name, else ``ImageReadError``
    saying which of those it is not."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageReadError(f"{path}: unsupported file type {path.suffix!r} (expected {', '.join(IMAGE_SUFFIXES)})")
    check_signature(path)
    return path


def decode_image(path: str | Path) -> np.ndarray:
    """The whole pixel array of an image file as its decoder gives it (no axis checks: see
    ``io.stack_reader.read_image``, which every reader of image files uses)."""
    path = checked_image_file(path)
    try:
        if is_tiff(path):
            return np.asarray(tifffile.imread(path))
        from PIL import Image  # here: TIFF work (every stack) does not need Pillow

        with Image.open(path) as image:
            return pil_pixels(image, path)
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder error means the same thing to the user
        raise ImageReadError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc


#: Pillow colour models and what they are decoded to: the mode converted to, or ``None`` for the pixels as stored.
PIL_MODES = {"1": None, "L": None, "I;16": None, "I;16L": None, "I;16B": None, "I;16N": None, "I": None, "F": None,
             "RGB": None, "RGBA": None, "LA": "L", "La": "L", "PA": "RGB", "P": "RGB", "CMYK": "RGB",
             "YCbCr": "RGB", "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGBA"}


def pil_pixels(image: PIL.Image.Image, path: Path) -> np.ndarray:
    """The pixels of a Pillow image as a viewer shows them (``PIL_MODES``); ``ImageReadError`` naming a colour
    model without one reading (LAB, a multi-frame file)."""
    if getattr(image, "n_frames", 1) > 1:
        raise ImageReadError(f"{path}: holds {image.n_frames} frames (an animation); save the one to segment as its "
                             "own PNG/JPEG or the frames as a TIFF stack")
    if image.mode not in PIL_MODES:
        raise ImageReadError(f"{path}: colour model {image.mode!r} is not supported (supported: "
                             f"{', '.join(PIL_MODES)}); convert it to RGB or grayscale first")
    target = PIL_MODES[image.mode]
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # a palette's transparent entry: through RGBA, whose alpha is then ignored
    return np.asarray(image.convert(target) if target else image)


def tiff_colour(page, path: Path):
    """How a TIFF page's pixels become what a viewer shows: ``None`` (as stored: MINISBLACK, RGB, JPEG-decoded
    YCbCr) or ``(convert, channels)``, a function of one plane and its channel count after conversion (0 = gray);
    ``ImageReadError`` for a photometric interpretation without one reading here."""
    photometric = tifffile.PHOTOMETRIC
    kind, dtype = page.photometric, np.dtype(page.dtype)
    if kind in (photometric.MINISBLACK, photometric.RGB):
        return None
    if kind == photometric.YCBCR and page.compression == tifffile.COMPRESSION.JPEG:
        return None  # the JPEG decoder gives RGB
    if kind == photometric.MINISWHITE and (dtype.kind in "ub"):
        top = (1 << int(page.bitspersample)) - 1
        return (lambda p: ~p if p.dtype == bool else (top - p).astype(p.dtype)), 0
    if kind == photometric.PALETTE and page.colormap is not None:
        return _palette(np.asarray(page.colormap))
    inks = page.tags.get("InkSet")
    if kind == photometric.SEPARATED and (inks is None or inks.value == 1) and dtype.kind == "u" \
            and page.samplesperpixel == 4:
        return _cmyk_to_rgb, 3
    name = getattr(kind, "name", str(kind))
    raise ImageReadError(f"{path}: TIFF colour model {name} ({dtype}, {page.samplesperpixel} samples per pixel, "
                         f"{page.compression.name} compression) is not supported; convert it to grayscale or RGB "
                         "(supported: MINISBLACK, MINISWHITE, RGB, PALETTE, CMYK, JPEG-compressed YCbCr)")


def _palette(colormap: np.ndarray):
    """A palette's (3, N) uint16 colour map as a lookup: gray (one row) when its rows are equal, else RGB; 8-bit
    values when every entry is a multiple of 257 (how 8-bit palettes are stored)."""
    table = (colormap // 257).astype(np.uint8) if not (colormap % 257).any() else colormap
    if (table[0] == table[1]).all() and (table[0] == table[2]).all():
        gray = table[0]
        return (lambda p: gray[p]), 0
    rgb = np.ascontiguousarray(table.T)
    return (lambda p: rgb[p]), 3


def _cmyk_to_rgb(plane: np.ndarray) -> np.ndarray:
    """RGB of a CMYK plane (Y, X, 4): each of R, G, B is (1 - ink)(1 - black), in the plane's unsigned dtype."""
    top = np.iinfo(plane.dtype).max
    white = top - plane.astype(np.uint64)
    rgb = (white[..., :3] * white[..., 3:] + top // 2) // top
    return rgb.astype(plane.dtype)


#: The first bytes every file of a type starts with.
SIGNATURES = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
              ".tif": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), ".tiff": (b"II*\x00", b"MM\x00*", b"II+\x00",
                                                                         b"MM\x00+")}


def check_signature(path: Path) -> None:
    """``ImageReadError`` for an empty file or one whose first bytes are not those of its type (said plainly,
    instead of a decoder's advice to install plugins)."""
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(f"{path}: is empty (0 bytes); the file was not written completely or is not an image")
    kind = path.suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not any(head.startswith(sig) for sig in SIGNATURES.get(kind, (b"",))):
        raise ImageReadError(f"{path}: is not a {kind.lstrip('.').upper()} file ({size} bytes starting "
                             f"{head[:8]!r}); it is truncated, corrupt or misnamed")


def mask_plane(mask: np.ndarray) -> np.ndarray:
    """A mask without colour: an RGB(A) mask image (Y, X, 3|4) gives its first channel."""
    mask = np.asarray(mask)
    return mask[..., 0] if mask.ndim == 3 and has_colour_axis(mask.shape) else mask


LOSSY_SUFFIXES = (".jpg", ".jpeg")


def mask_foreground(mask: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Foreground of a mask read from ``path``: > 0, except for a lossy (JPEG) file, whose compression ringing
    spreads small values around every edge: there > half the dtype's range (> 127 for 8 bits). ``ValueError`` for a
    JPEG mask whose values never reach that (e.g. a 0/1 mask saved as JPEG: ringing cannot be told from objects)."""
    mask = np.asarray(mask)
    if path is None or Path(path).suffix.lower() not in LOSSY_SUFFIXES or mask.dtype == bool:
        return mask > 0
    middle = np.iinfo(mask.dtype).max / 2 if mask.dtype.kind in "ui" else 0.5
    foreground = mask > middle
    if mask.any() and not foreground.any():
        raise ValueError(f"{path}: a JPEG (lossy) mask with values up to {mask.max()} only: its objects cannot be "
                         f"told from compression ringing; expected 0 and {int(2 * middle)} (or save masks as PNG/TIFF)")
    return foreground


def list_images(path: str | Path) -> list[Path]:
    """Image files in a folder (sorted), or the file itself."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise ImageReadError(f"{path}: no such file or folder")


def select_split(pairs: list[tuple[Path, Path]], split_csv: str | Path, subset: str) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs whose image stem is listed under ``subset`` in a ``name,subset`` CSV (split.csv)."""
    with open(split_csv, newline="") as fh:
        names = {Path(row[0]).stem for row in csv.reader(fh) if len(row) >= 2 and row[1].strip() == subset}
    if not names:
        raise ValueError(f"{split_csv}: no rows with subset {subset!r}")
    return [pair for pair in pairs if pair[0].stem in names]


def pair_files(images: Sequence[str | Path], masks: str | Path | Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs: masks found by file stem in one or more folders, or one mask file for one image."""
    files = [f for p in images for f in list_images(p)]
    if not files:
        raise ValueError(f"no image files in {', '.join(map(str, images))}")
    mask_paths = [Path(masks)] if isinstance(masks, (str, Path)) else [Path(m) for m in masks]
    if all(m.is_dir() for m in mask_paths):
        by_stem = {f.stem: f for m in mask_paths for f in list_images(m)}
        missing = [f.name for f in files if f.stem not in by_stem]
        if missing:
            where = ", ".join(map(str, mask_paths))
            raise ValueError(f"no mask in {where} for {len(missing)} image(s): {', '.join(missing[:5])}")
        return [(f, by_stem[f.stem]) for f in files]
    if len(files) == 1 and len(mask_paths) == 1 and mask_paths[0].is_file():
        return [(files[0], mask_paths[0])]
    raise ValueError(f"{', '.join(map(str, mask_paths))}: give mask folder(s) (paired by stem) for {len(files)} images")
