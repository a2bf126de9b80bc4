"""Real-data checks of the shipped weights (marked slow; skipped with the reason when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_data
from napari_alnet import load_model
from napari_alnet.engine.progress import run_job
from napari_alnet.io.images import pair_files, select_split
from napari_alnet.io.pretrained import shipped_models
from napari_alnet.training.evaluation import evaluate_job, summarize

pytestmark = pytest.mark.slow


def _scores(name: str, files, **kw):
    if name not in shipped_models():
        pytest.fail(f"the built-in model {name!r} is not shipped in this installation")
    model = load_model(name, device="cpu")
    rows = run_job(evaluate_job(model, files, **kw))
    return rows, summarize(rows)


def test_em_model_on_isbi_test_slices():
    """Cell-interior IoU beats the paper's 0.8963; pixel accuracy is guarded at our measured level (0.9224 when
    shipped; the paper's 0.9406 is not reached yet, see docs/models.md)."""
    root = require_data("isbi2012") / "train"
    files = pair_files([root / "images" / f"{i:02d}.png" for i in range(21, 30)], root / "labels")
    # labels: 255 = cell interior, 0 = membrane; the model's foreground is the membrane
    rows, summary = _scores("em", files, invert=True)
    assert len(rows) == 9
    interior = summary["background"]
    assert interior["iou"]["mean"] > 0.8963
    assert interior["accuracy"]["mean"] > 0.92
    assert np.isfinite(summary["foreground"]["dice"]["mean"])


def test_dermoscopy_model_beats_the_paper_on_isic_val():
    root = require_data("isic2018")
    files = pair_files([root / "images"], root / "masks")
    rows, summary = _scores("dermoscopy", select_split(files, root / "split.csv", "val"))
    assert len(rows) == 400
    lesion = summary["foreground"]
    assert lesion["accuracy"]["mean"] > 0.9312
    assert lesion["iou"]["mean"] > 0.7947


def test_fundus_model_on_stare_test():
    """Both figures beat Table 6: accuracy 0.9728 (measured 0.9749), vessel IoU 0.6851 (measured 0.6878)."""
    root = require_data("stare")
    names = ["im0239", "im0240", "im0255", "im0291", "im0319", "im0324"]
    files = pair_files([root / "images" / f"{n}.png" for n in names], root / "masks")
    rows, summary = _scores("fundus", files)
    assert len(rows) == 6
    assert summary["foreground"]["accuracy"]["mean"] > 0.9728
    assert summary["foreground"]["iou"]["mean"] > 0.6851
