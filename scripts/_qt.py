"""What the screenshot scripts share: letting Qt draw for a while (they run as ``python scripts/NAME.py``, so this
folder is on ``sys.path``)."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QApplication


def pump(seconds: float) -> None:
    """Process Qt events for ``seconds`` (layers load, docks lay out, the canvas draws)."""
    app, end = QApplication.instance(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)
