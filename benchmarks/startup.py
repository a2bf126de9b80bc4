"""How fast the command line starts (issue 27: ``alnet --help`` took 5 s, imports were 46 % of a 100-slice run):
wall times of ``alnet --help`` and of ``alnet segment`` of one 512 x 512 image, each in a fresh process, beside
the floor (``import torch``) and what the TIFF path no longer imports (the volume engine: dask, zarr, ome-zarr).
``alnet segment`` runs twice: with this CPU's precision speeds kept (``auto`` reads them) and as a first run where
none are (an empty ``NAPARI_ALNET_CACHE``; the background speed check that run would start is switched off here
and timed on its own: it used to run inside the first ``load_model`` of every machine).

    python benchmarks/startup.py [--repeats 5] [--model em|FILE] [--size 512] [--cases help torch segment ...]
                                 [--baseline SRC] [--json]

Runs are interleaved and the median of each is printed (one line per figure). Target: <= 1.5 s for ``--help``
and for a one-image segment on an idle machine; on a loaded one compare the figures with each other.
``--baseline SRC``: each command also runs with ``PYTHONPATH=SRC`` (another checkout's ``src``, e.g. from
``git archive HEAD~1 src | tar -x -C /tmp/before``), interleaved with this one: before/after under the same load.
``--json``: one JSON object (``{"load": [before, after], "cpu": ..., "cases": {key: {"name", "median", "min"}}}``)
instead of the lines (``benchmarks/speed_table.py`` reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from machine import cpu_name
from napari_alnet.io.pretrained import builtin_path

PYTHON = sys.executable

#: What each case key measures (``--cases``).
CASES = {
    "python": "python (nothing imported)",
    "help": "alnet --help",
    "torch": "import torch (the floor of any segment)",
    "segment": "alnet segment one {size}x{size} image",
    "first": "  the same, first run on this machine (no speeds kept)",
    "check": "the int8 speed check (now a background process)",
    "import": "import of the TIFF path (cli.segment)",
    "volume": "+ the volume engine (was imported by every command)",
}

Case = tuple[list[str], dict[str, str]]


def _wall(case: Case) -> float:
    """Seconds a command takes from start to exit (output discarded; a failure stops the benchmark)."""
    command, env = case
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ | env)
    return time.perf_counter() - start


def _commands(folder: Path, model: str, size: int) -> dict[str, Case]:
    """Every case's command and the environment it adds."""
    image = folder / "one.tif"
    if not image.exists():
        tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8))
    alnet = [PYTHON, "-m", "napari_alnet.cli"]
    segment = [*alnet, "segment", str(image), "-o", str(folder / "out"), "--model", model, "--device", "cpu",
               "--quiet", "--overwrite"]
    weights = builtin_path(model) if not Path(model).is_file() else Path(model)
    return {
        "python": ([PYTHON, "-c", "pass"], {}),
        "help": ([*alnet, "--help"], {}),
        "torch": ([PYTHON, "-c", "import torch"], {}),
        "segment": (segment, {}),
        "first": (segment, {"NAPARI_ALNET_CACHE": str(folder / "no-speeds-yet"), "NAPARI_ALNET_SPEED_CHECK": "0"}),
        "check": ([PYTHON, "-m", "napari_alnet.engine.speed_check", str(weights), "--candidates", "fp32,bf16,int8",
                   "--threads", "2"], {"NAPARI_ALNET_CACHE": str(folder / "c")}),
        "import": ([PYTHON, "-c", "import napari_alnet.cli.segment"], {}),
        "volume": ([PYTHON, "-c", "import napari_alnet.cli.segment, napari_alnet.engine.volume"], {}),
    }


def measure(cases: list[str], *, repeats: int, model: str = "em", size: int = 512,
            baseline: str | None = None) -> dict:
    """Median and min seconds of each case (and of each case with ``PYTHONPATH=baseline``), interleaved."""
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="alnet-startup-") as tmp:
        commands = _commands(Path(tmp), model, size)
        runs = {key: commands[key] for key in cases}
        if baseline:
            path = os.pathsep.join([str(Path(baseline).resolve()), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            runs |= {f"{key}@baseline": (command, env | {"PYTHONPATH": path}) for key, (command, env) in runs.items()}
        times: dict[str, list[float]] = {key: [] for key in runs}
        for case in runs.values():  # warm the file cache once
            _wall(case)
        for _ in range(repeats):
            for key, case in runs.items():
                times[key].append(_wall(case))
    load.append(os.getloadavg()[0])
    out = {}
    for key, values in times.items():
        name = CASES[key.split("@")[0]].format(size=size) + (" [baseline]" if key.endswith("@baseline") else "")
        out[key] = {"name": name, "median": statistics.median(values), "min": min(values)}
    return {"load": load, "cpu": cpu_name(), "repeats": repeats, "cases": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="em")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--baseline", metavar="SRC", help="also run each command with PYTHONPATH=SRC, interleaved")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args()
    result = measure(args.cases, repeats=args.repeats, model=args.model, size=args.size, baseline=args.baseline)
    if args.json:
        print(json.dumps(result))
        return
    print(f"startup, median of {args.repeats} fresh processes; {result['cpu']}, load average "
          f"{result['load'][0]:.1f} -> {result['load'][1]:.1f}")
    for figures in result["cases"].values():
        print(f"{figures['name']:<66} {figures['median']:6.2f} s  (min {figures['min']:.2f})")


if __name__ == "__main__":
    main()
