"""napari docks; thin layers over the Qt-free core (``widgets._worker`` is the one way to run work)."""

from __future__ import annotations

from .batch import BatchWidget
from .finetune import FinetuneWidget
from .segment import SegmentWidget

__all__ = ["BatchWidget", "FinetuneWidget", "SegmentWidget"]
