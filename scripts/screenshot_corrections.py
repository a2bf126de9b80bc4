"""docs/correcting.md's screenshot: a Segment result corrected with napari's brush, kept over a new threshold.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_corrections.py [OUT.png]

Segments a generated EM-like stack (3 x 256 x 256, ``io.sample_data.em_like_stack``) with the ``em`` model in the
Segment dock, paints two corrections on the displayed slice with napari's own brush (a filled patch and an erased
one), moves the threshold (the corrections stay), adds the uncertainty layer (hidden) and grabs the window.
Default output: docs/images/correcting.png (1000 px wide, 64-colour palette PNG).
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
from _qt import pump
from PIL import Image as PILImage

from napari_alnet.io.sample_data import em_like_stack
from napari_alnet.widgets import SegmentWidget

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (AL-Net)")
    viewer.add_image(em_like_stack(depth=3, size=256, cells=30, seed=3)[0], name="em stack")
    viewer.dims.set_current_step(0, 1)
    widget.models.select("em")
    assert widget.run_blocking()
    labels = viewer.layers[widget.output_name()]
    labels.brush_size = 30
    for y in range(60, 100, 6):  # a stroke of foreground, and one erased
        labels.paint((1, y, 70), 1)
        labels.paint((1, y + 100, 180), 0)
    pump(0.5)
    widget.threshold.value = 0.35  # a new threshold: the corrections stay
    widget.corrections.show_uncertainty().visible = False  # listed; shown, it would wash out the picture
    viewer.layers.selection.active = labels
    labels.opacity = 0.6
    pump(1.0)
    image = viewer.screenshot(canvas_only=False, flash=False)
    shot = PILImage.fromarray(image[..., :3])
    shot = shot.resize((1000, round(shot.height * 1000 / shot.width)), PILImage.LANCZOS)
    shot.quantize(64).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {widget.corrections.count.value}")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "correcting.png")
