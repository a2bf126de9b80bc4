"""The README's big-volume screenshot: a lazily opened OME-Zarr volume being segmented in napari.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_big_volume.py [OUT.png]

Writes a 60 x 1024 x 1024 OME-Zarr of ISBI 2012 tiles (``benchmarks/volume.py generate``) to a temporary folder,
opens it with ``open_volume`` (a lazy dask layer with its pixel size), docks Segment (AL-Net) with the ``em`` model
on the whole stack and grabs the window once the first block (16 slices) is shown, while the rest is running;
then cancels. Default output: docs/images/napari-big-volume.png (1000 px wide, 64-colour palette PNG).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _qt import pump  # noqa: E402

from napari_alnet.io.volumes import open_volume  # noqa: E402
from napari_alnet.widgets import SegmentWidget  # noqa: E402
from napari_alnet.widgets._layers import WHOLE_STACK  # noqa: E402
from volume import generate  # noqa: E402


def main(out: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="alnet-shot-"))
    path = generate(folder / "em.ome.zarr", 60 * 1024 * 1024 / 1e9, 1024)
    volume = open_volume(path)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (AL-Net)")
    viewer.add_image(volume.data, name="em.ome.zarr (lazy)", scale=volume.geometry.scale,
                     contrast_limits=(0, 255))
    viewer.dims.set_current_step(0, 5)
    widget.models.select("em")
    widget.scope.value = WHOLE_STACK
    pump(1.0)
    assert widget.segment()
    while widget.runner.running:
        pump(0.2)
        layer = next((la for la in viewer.layers if la.name == widget.output_name()), None)
        if layer is not None and np.asarray(layer._slice.image.raw).any():
            layer.opacity = 0.45
            pump(1.0)
            image = viewer.screenshot(canvas_only=False, flash=False)
            shot = PILImage.fromarray(image[..., :3])
            shot = shot.resize((1000, round(shot.height * 1000 / shot.width)), PILImage.LANCZOS)
            shot.quantize(64).save(out, optimize=True)
            print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) at: {widget.status.value}")
            widget.runner.cancel()
            break
    while widget.runner.running:
        pump(0.2)
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "napari-big-volume.png")
