"""The README's dock screenshots, taken at laptop size (a 1366 x 768 screen) in a real napari window.

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshot_docks.py [OUT_FOLDER]

Writes to docs/images/ (default): ``segment-widget.png`` (Segment dock, a generated EM slice segmented with
``em``), ``finetune-dock.png`` (Fine-tune dock after a short run from ``em`` on two annotated slices, scrolled to
its real curve), ``batch-dock.png`` (Batch dock after segmenting two files, outputs opened in the viewer) and
``docks-laptop.png`` (all three docks open together, as napari stacks them). Each is the whole window, 1366 x 708
(a laptop screen less its task bar), saved as a 128-colour palette PNG.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
import tifffile
from _qt import pump
from PIL import Image as PILImage

from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.widgets import BatchWidget, FinetuneWidget, SegmentWidget

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1366, 708)
DOCKS = {"Segment (AL-Net)": SegmentWidget, "Fine-tune (AL-Net)": FinetuneWidget,
         "Batch segment (AL-Net)": BatchWidget}


def viewer_with(*names: str) -> tuple[napari.Viewer, list]:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*WINDOW)
    widgets = [viewer.window.add_plugin_dock_widget("napari-alnet", name)[1] for name in names]
    pump(0.5)
    return viewer, widgets


def shoot(viewer: napari.Viewer, out: Path) -> None:
    viewer.window._qt_window.resize(*WINDOW)
    pump(0.8)
    image = viewer.screenshot(canvas_only=False, flash=False)
    PILImage.fromarray(image[..., :3]).quantize(128).save(out, optimize=True)
    print(f"wrote {out} ({image.shape[1]} x {image.shape[0]}, {out.stat().st_size / 1e3:.0f} kB)")


def wait(widget) -> None:
    while widget.runner.running:
        pump(0.2)


def segment_shot(stack: np.ndarray, out: Path) -> None:
    viewer, (segment,) = viewer_with("Segment (AL-Net)")
    viewer.add_image(stack[0], name="EM slice", scale=(4.0, 4.0), units=("nm", "nm"))
    segment.models.select("em")
    assert segment.run_blocking()
    viewer.layers[segment.output_name()].opacity = 0.5
    shoot(viewer, out)
    viewer.close()


def finetune_shot(stack: np.ndarray, truth: np.ndarray, folder: Path, out: Path) -> None:
    viewer, (dock,) = viewer_with("Fine-tune (AL-Net)")
    viewer.add_image(stack, name="EM stack")
    labels = dock.add_annotations_layer()
    labels.data[:2] = np.where(truth[:2], 1, 0).astype(labels.data.dtype)  # two slices painted: 1 = membrane
    labels.refresh()
    dock.refresh_slices()
    dock.models.select("em")
    dock.output.value = folder / "em-finetuned.safetensors"
    dock.advanced.folded = False
    dock.epochs.value, dock.steps.value, dock.crop.value, dock.batch_size.value = 3, 4, 128, 2
    dock.holdout.value = 1
    assert dock.start()
    wait(dock)
    dock.advanced.folded = True
    pump(0.3)
    dock.scroll_area.ensureWidgetVisible(dock.curve, 0, 0)  # the curve and the end-of-run report
    shoot(viewer, out)
    viewer.close()


def batch_shot(stack: np.ndarray, folder: Path, out: Path) -> None:
    viewer, (batch,) = viewer_with("Batch segment (AL-Net)")
    src = folder / "images"
    src.mkdir()
    for i in range(2):
        tifffile.imwrite(src / f"slice{i}.tif", stack[i])
    batch.models.select("em")
    batch.folder.value, batch.outdir.value = src, folder / "labels"
    batch.open_outputs.value = True
    assert batch.start()
    wait(batch)
    shoot(viewer, out)
    viewer.close()


def all_docks_shot(stack: np.ndarray, out: Path) -> None:
    viewer, widgets = viewer_with(*DOCKS)
    viewer.add_image(stack, name="EM stack")
    widgets[0].models.select("em")
    shoot(viewer, out)
    viewer.close()


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stack, membranes = em_like_stack(depth=4, size=384, cells=50, seed=3)
    with tempfile.TemporaryDirectory(prefix="alnet-shots-") as tmp:
        segment_shot(stack, folder / "segment-widget.png")
        finetune_shot(stack, membranes, Path(tmp), folder / "finetune-dock.png")
        batch_shot(stack, Path(tmp), folder / "batch-dock.png")
        all_docks_shot(stack, folder / "docks-laptop.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images")
