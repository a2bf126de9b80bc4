"""napari docks; thin layers over the Qt-free core (``widgets._worker`` is the one way to run work)."""

from __future__ import annotations

from ..engine.threads import prepare_for

prepare_for("viewer")  # before the docks import torch: OpenMP threads that spin briefly, then sleep

from .batch import BatchWidget  # noqa: E402
from .finetune import FinetuneWidget  # noqa: E402
from .segment import SegmentWidget  # noqa: E402

__all__ = ["BatchWidget", "FinetuneWidget", "SegmentWidget"]
