"""Checks of flags and arguments, in one place: the command line runs them when it reads a flag, the engine's entry
points (``segment_files_job``, ``segment_volume_job``, ``TrainConfig``) on what the API hands them.

Each check returns the value in its canonical type or raises ``UsageError`` (a ``ValueError``) naming the flag,
what it expects and what it got. Nothing here imports torch, dask or zarr: ``alnet --help`` reads these.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

from ..io.pretrained import BUILTIN_NAMES

#: The most torch threads per process and Dask workers of a local cluster we accept (far beyond any machine).
MAX_THREADS = 1024
#: What ``alnet export`` / ``engine.export`` write.
EXPORT_FORMATS = ("bioimageio", "onnx", "torchscript")
#: Devices by name (``cuda:N`` too); whether one is available here is checked where torch is loaded.
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


class UsageError(ValueError):
    """A flag or argument that cannot be used: exit code 2 on the command line, nothing written."""


def whole(value, name: str, *, minimum: int = 1, maximum: int | None = None, zero: str | None = None) -> int:
    """``value`` as an int in [``minimum``, ``maximum``]; ``zero`` (what 0 means) allows 0 below ``minimum``."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise UsageError(f"{name}: expected a whole number, got {value!r}") from None
    integral = isinstance(value, Integral) or (isinstance(value, Real) and math.isfinite(value)
                                               and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise UsageError(f"{name}: expected a whole number, got {value!r}")
    value = int(value)
    if value == 0 and zero is not None:
        return 0
    if value < minimum or (maximum is not None and value > maximum):
        limits = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
        raise UsageError(f"{name}: must be {limits}{f' (or 0: {zero})' if zero else ''}, got {value}")
    return value


def number(value, name: str, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None) -> float:
    """``value`` as a finite float >= ``minimum`` (> ``above``) and <= ``maximum`` (< ``below``)."""
    try:
        value = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{name}: expected a finite number, got {value}")
    if (above is not None and value <= above) or (below is not None and value >= below):
        limits = " and ".join(t for t in (above is not None and f"greater than {above:g}",
                                          below is not None and f"less than {below:g}") if t)
        raise UsageError(f"{name}: must be {limits}, got {value:g}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = f"at least {minimum:g}" if minimum is not None else ""
        high = f"at most {maximum:g}" if maximum is not None else ""
        raise UsageError(f"{name}: must be {' and '.join(t for t in (low, high) if t)}, got {value:g}")
    return value


def threads(value, name: str = "--threads") -> int | None:
    """Torch threads per process: ``None`` (automatic) or 1 .. ``MAX_THREADS``."""
    return None if value is None else whole(value, name, maximum=MAX_THREADS)


def workers(value, name: str = "--workers") -> int | None:
    """Dask workers: ``None`` (in-process) or 1 .. ``MAX_THREADS`` (whether they can add cores here is the engine's
    choice: ``engine.blockwise`` runs in-process where they cannot, and says so)."""
    return None if value is None else whole(value, name, maximum=MAX_THREADS)


def block(value, name: str = "--block") -> tuple[int, int, int] | None:
    """A (Z, Y, X) block shape of whole numbers >= 1, or ``None`` (automatic)."""
    if value is None:
        return None
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    if len(values) != 3:
        raise UsageError(f"{name}: expected three sizes Z Y X, got {len(values)}: {values}")
    return tuple(whole(v, f"{name} {axis}") for v, axis in zip(values, "ZYX", strict=True))  # type: ignore[return-value]


def tile(value, name: str = "--tile") -> int | None:
    """A tile size: ``None`` (automatic) or a whole number >= 1 (``tiling.check_tile`` adds the network's rules)."""
    return None if value is None else whole(value, name)


def crop(value: int, shapes: Sequence[tuple[int, int]], name: str = "--crop", *, default: int = 256) -> int:
    """A training crop in pixels, at least 32 (the network's stride). Images smaller than the crop are padded (the
    padding is ignored), so a crop larger than every image of ``shapes`` (each pair's (Y, X) as the network sees
    it) and than ``default`` only spends memory and time on padding: refused."""
    value = whole(value, name, minimum=32)
    if shapes:
        side = max(max(s) for s in shapes)
        if value > max(default, side):
            largest = max(shapes, key=lambda s: s[0] * s[1])
            raise UsageError(f"{name} {value} is larger than every training image (the largest is {largest[0]} x "
                             f"{largest[1]} px): crops would be mostly padding; give at most {max(default, side)}")
    return value


def device_name(value: str, name: str = "--device") -> str:
    """A device name: auto, cpu, cuda, cuda:N or mps (``devices.resolve_device`` says whether it is here)."""
    text = str(value).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in DEVICE_NAMES or (index and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"{name}: unknown device {value!r}; choose auto, cpu, cuda, cuda:N or mps")
    return text


def model_name(value: str, name: str = "--model") -> str:
    """A built-in model name in any case (``EM`` is ``em``) or an existing path; a near miss of a name gets
    "did you mean"."""
    text = str(value).strip()
    if text.lower() in BUILTIN_NAMES and not Path(text).exists():
        return text.lower()
    if Path(text).expanduser().exists():
        return text
    near = difflib.get_close_matches(text.lower(), BUILTIN_NAMES, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise UsageError(f"{name} {text!r}: no built-in model of that name and no such file; {hint}(built-in: "
                     f"{', '.join(BUILTIN_NAMES)}, in any case; or a .safetensors weight file / bioimage.io package)")


def output_folder(out: str | Path, name: str = "-o") -> Path:
    """A folder to write into: new or existing, not a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{name} {out}: is a file; give a folder (it is created if it does not exist)")
    return out


def distinct_outputs(labels: str | Path, probabilities: str | Path | None, name: str = "prob_dest") -> None:
    """The probabilities' destination is neither the labels' nor inside it (nor it inside the probabilities')."""
    if not isinstance(probabilities, (str, Path)) or not isinstance(labels, (str, Path)):
        return  # Zarr groups: the engine compares their stores
    a, b = Path(labels).resolve(), Path(probabilities).resolve()
    if a == b or a in b.parents or b in a.parents:
        raise UsageError(f"{name} {probabilities}: is (or lies inside, or holds) the labels' output {labels}; give "
                         "the probabilities their own path")


def volume_arguments(*, dest=None, prob_dest=None, block_shape=None, tile_size=None, workers_count=None,
                     threads_count=None, halo=None) -> None:
    """The checks of ``segment_volume_job``'s arguments (the same as the command line's flags): block, tile,
    workers, threads and watershed halo in range, the probabilities' destination apart from the labels'."""
    block(block_shape, "block")
    tile(tile_size, "tile")
    workers(workers_count, "workers")
    threads(threads_count, "threads")
    if halo is not None:
        whole(halo, "watershed_halo", maximum=4096)
    if isinstance(dest, (str, Path)) and str(dest).lower().rstrip("/").endswith(".zarr"):  # the labels' store
        distinct_outputs(dest, prob_dest)
