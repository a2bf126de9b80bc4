"""How fast the command line starts (issue 27: ``alnet --help`` took 5 s, imports were 46 % of a 100-slice run):
wall times of ``alnet --help`` and of ``alnet segment`` of one 512 x 512 image, each in a fresh process, beside
the floor (``import torch``) and what the TIFF path no longer imports (the volume engine: dask, zarr, ome-zarr).
``alnet segment`` runs twice: with this CPU's precision speeds kept (``auto`` reads them) and as a first run where
none are (an empty ``NAPARI_ALNET_CACHE``; the background speed check that run would start is switched off here
and timed on its own: it used to run inside the first ``load_model`` of every machine).

    python benchmarks/startup.py [--repeats 5] [--model em|FILE] [--size 512]

Runs are interleaved and the median of each is printed (one line per figure). Target: <= 1.5 s for ``--help``
and for a one-image segment on an idle machine; on a loaded one compare the figures with each other.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_alnet.io.pretrained import builtin_path

PYTHON = sys.executable


Case = tuple[list[str], dict[str, str]]


def _wall(case: Case) -> float:
    """Seconds a command takes from start to exit (output discarded; a failure stops the benchmark)."""
    command, env = case
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ | env)
    return time.perf_counter() - start


def _with_env(cases: dict[str, list[str]], folder: Path, model: str) -> dict[str, Case]:
    """Every command in this environment; plus the first run (no speeds kept) and the speed check itself."""
    segment = next(command for name, command in cases.items() if name.startswith("alnet segment"))
    empty = {"NAPARI_ALNET_CACHE": str(folder / "no-speeds-yet"), "NAPARI_ALNET_SPEED_CHECK": "0"}
    weights = builtin_path(model) if not Path(model).is_file() else Path(model)
    check = [PYTHON, "-m", "napari_alnet.engine.speed_check", str(weights), "--candidates", "fp32,bf16,int8",
             "--threads", "2"]
    found = {name: (command, {}) for name, command in cases.items()}
    found["  the same, first run on this machine (no speeds kept)"] = (segment, empty)
    found["the int8 speed check (now a background process)"] = (check, {"NAPARI_ALNET_CACHE": str(folder / "c")})
    return found


def _cases(folder: Path, model: str, size: int) -> dict[str, list[str]]:
    image = folder / "one.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(image, rng.integers(0, 255, (size, size), dtype=np.uint8))
    alnet = [PYTHON, "-m", "napari_alnet.cli"]
    return {
        "python (nothing imported)": [PYTHON, "-c", "pass"],
        "alnet --help": [*alnet, "--help"],
        "import torch (the floor of any segment)": [PYTHON, "-c", "import torch"],
        f"alnet segment one {size}x{size} image": [*alnet, "segment", str(image), "-o", str(folder / "out"),
                                                   "--model", model, "--device", "cpu", "--quiet", "--overwrite"],
        "import of the TIFF path (cli.segment)": [PYTHON, "-c", "import napari_alnet.cli.segment"],
        "+ the volume engine (was imported by every command)": [
            PYTHON, "-c", "import napari_alnet.cli.segment, napari_alnet.engine.volume"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="em")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = _with_env(_cases(Path(tmp), args.model, args.size), Path(tmp), args.model)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for command in cases.values():  # warm the file cache once
            _wall(command)
        for _ in range(args.repeats):
            for name, command in cases.items():
                times[name].append(_wall(command))
    cpu = platform.processor() or platform.machine()
    print(f"startup, median of {args.repeats} fresh processes; {cpu}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"{name:<55} {statistics.median(values):6.2f} s  (min {min(values):.2f})")


if __name__ == "__main__":
    main()
