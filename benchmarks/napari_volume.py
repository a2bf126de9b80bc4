"""The Segment dock on big lazy volumes in a real napari viewer: peak RSS of the viewer process against volume
size, the longest event-loop stall, and the time to the first visible labels.

    xvfb-run -a python benchmarks/napari_volume.py [--gb 1 4 16] [--plane 2048] [--blocks 2] [--block-slices 1]
                                                    [--model em] [--json report.json]

Each size runs in a fresh viewer process (``one``, so every peak is its own): a uint8 volume of about GB
gigabytes, ``--plane`` pixels on a side, made lazily by dask from the ISBI 2012 slices (``../shared/data``; EM-like
synthetic planes where absent), never written anywhere, is added as an image layer; the Segment dock (model
``--model``, scope 'whole stack') is pressed with the viewer on slice 0 and, as whole volumes take hours on a CPU,
cancelled once ``--blocks`` blocks of ``--block-slices`` slices are finished (the output printed says so). Measured:
the process's peak RSS (VmHWM, reset after the viewer and layer are set up; the growth is what segmenting added),
the longest gap between ticks of a 10 ms QTimer from pressing Segment to the end (``stall_ms``: napari adding
the output Labels layer falls in it) and from the moment that layer is in place (``stall_after_layer_ms``), how
long the Segment call itself held the event loop (``segment_call_ms``), the time from pressing Segment to labels
on the displayed slice (``first_labels_s``) and the engine's slices/s. Needs a display (Xvfb).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def source_slices() -> np.ndarray:
    """The ISBI 2012 training slices (uint8, 512 x 512), or generated EM-like ones."""
    folder = Path(os.environ.get("NAPARI_ALNET_DATA", DATA)) / "isbi2012" / "train" / "images"
    files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.tif"))
    if files:
        from skimage.io import imread

        return np.stack([imread(f) for f in files]).astype(np.uint8)
    from napari_alnet.io.sample_data import em_like_stack

    return em_like_stack(depth=30, size=512, cells=240)[0]


def lazy_volume(gb: float, plane: int):
    """A dask (Z, plane, plane) uint8 volume of about ``gb`` GB, one chunk per slice, each a different tiling."""
    import dask.array as da

    slices = source_slices()
    depth = max(1, round(gb * 2**30 / plane / plane))
    reps = -(-plane // slices.shape[1])

    def make(block_info=None):
        z = block_info[None]["array-location"][0][0]
        rng = np.random.default_rng(z)
        tiles = [[np.rot90(slices[rng.integers(len(slices))], rng.integers(4)) for _ in range(reps)]
                 for _ in range(reps)]
        return np.block(tiles)[:plane, :plane][None]

    return da.map_blocks(make, dtype=np.uint8, chunks=((1,) * depth, (plane,), (plane,)))


def vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def one(args: argparse.Namespace) -> dict:
    """One viewer process: set up, press Segment, stop after ``--blocks`` blocks; the figures."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_alnet.engine.volume import plan
    from napari_alnet.widgets import SegmentWidget
    from napari_alnet.widgets._layers import WHOLE_STACK

    plan.BLOCK_VOXELS = args.block_slices * args.plane * args.plane
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (AL-Net)")
    data = lazy_volume(args.gb, args.plane)
    viewer.add_image(data, name="em", contrast_limits=(0, 255))
    viewer.dims.set_current_step(0, 0)
    widget.models.select(args.model)
    widget.scope.value = WHOLE_STACK
    app = QApplication.instance()
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)
    setup_rss = vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    figures = run_once(widget, app, args, QTimer)
    figures |= {"gb": round(data.nbytes / 2**30, 2), "shape": list(data.shape), "estimate": widget.estimate.value,
                "setup_rss_mb": round(setup_rss / 2**20), "peak_rss_mb": round(vm("VmHWM") / 2**20),
                "growth_mb": round((vm("VmHWM") - setup_rss) / 2**20)}
    viewer.close()
    return figures


def run_once(widget, app, args: argparse.Namespace, QTimer) -> dict:
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    marks: dict[str, float] = {}
    reports: list = []

    def on_report(report) -> None:
        reports.append(report)
        layer = next((la for la in widget.viewer.layers if la.name == widget.output_name()), None)
        if layer is not None and "shown" not in marks:
            marks["shown"] = time.perf_counter()
        if layer is not None and "first" not in marks and np.asarray(layer._slice.image.raw).any():
            marks["first"] = time.perf_counter()
        if report.metrics.get("phase") == "blocks" and report.metrics["blocks_done"] >= args.blocks:
            widget.runner.cancel()

    start = time.perf_counter()
    widget.segment()
    marks["returned"] = time.perf_counter()
    widget.runner.worker.yielded.connect(on_report)
    while widget.runner.running:
        app.processEvents()
        time.sleep(0.002)
    end = time.perf_counter()
    timer.stop()
    gaps = np.diff([start, *ticks, end])
    after = np.diff([t for t in [start, *ticks, end] if t >= marks.get("shown", start)])
    summary = widget.volume_summary
    return {"stall_ms": round(float(gaps.max()) * 1000), "stall_after_layer_ms": round(float(after.max()) * 1000),
            "segment_call_ms": round((marks["returned"] - start) * 1000),
            "first_labels_s": round(marks.get("first", float("nan")) - start, 2),
            "blocks_run": summary.blocks_run if summary else 0, "blocks": summary.blocks if summary else 0,
            "slices_per_s": round(summary.slices_per_second, 3) if summary else 0.0,
            "wall_s": round(end - start, 1), "status": widget.runner.last.status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "one"])
    parser.add_argument("--gb", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--plane", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=2, help="blocks to finish before Cancel")
    parser.add_argument("--block-slices", type=int, default=1, help="slices per engine block")
    parser.add_argument("--model", default="em")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.mode == "one":
        args.gb = args.gb[0]
        print("RESULT " + json.dumps(one(args)), flush=True)
        return
    rows = []
    for gb in args.gb:
        cmd = [sys.executable, __file__, "one", "--gb", str(gb), "--plane", str(args.plane), "--blocks",
               str(args.blocks), "--block-slices", str(args.block_slices), "--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the {gb} GB run failed")
        rows.append(json.loads(line[len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nwhole stack of each volume (planes {args.plane}², model {args.model}), cancelled after {args.blocks} "
          f"block(s) of {args.block_slices} slice(s): a whole run takes hours on this CPU (see the estimates)")
    print("| volume | shape | viewer RSS before | peak RSS | growth | longest stall | stall after the layer is added "
          "| first labels | slices/s | estimate |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['gb']} GB | {' x '.join(map(str, r['shape']))} | {r['setup_rss_mb']} MB | {r['peak_rss_mb']} MB "
              f"| {r['growth_mb']} MB | {r['stall_ms']} ms | {r['stall_after_layer_ms']} ms | {r['first_labels_s']} s "
              f"| {r['slices_per_s']} | {r['estimate']} |")


if __name__ == "__main__":
    main()
