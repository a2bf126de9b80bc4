from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_alnet.training.losses import dice_bce_loss
from napari_alnet.training.metrics import segmentation_scores


def test_perfect_prediction_has_near_zero_loss():
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    logits = (target * 2 - 1) * 30
    assert dice_bce_loss(logits, target).item() < 1e-3


def test_loss_matches_hand_computed_case():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    s = [1 / (1 + math.exp(-v)) for v in (0.0, 2.0, -1.0, 1.0)]
    bce = -(math.log(s[0]) + math.log(s[1]) + math.log(1 - s[2]) + math.log(1 - s[3])) / 4
    dice = 1 - (2 * (s[0] + s[1]) + 1) / (sum(s) + 2 + 1)
    assert dice_bce_loss(logits, target).item() == pytest.approx(bce + dice, rel=1e-5)


def test_ignored_pixels_get_zero_gradient_and_do_not_change_loss():
    target = (torch.rand(1, 1, 8, 8) > 0.5).float()
    ignore = torch.zeros_like(target)
    ignore[..., :4, :] = 1
    logits = torch.randn(1, 1, 8, 8, requires_grad=True)
    loss = dice_bce_loss(logits, target, ignore)
    loss.backward()
    assert torch.all(logits.grad[..., :4, :] == 0)
    assert torch.any(logits.grad[..., 4:, :] != 0)
    changed = logits.detach().clone()
    changed[..., :4, :] = 50.0
    flipped = target.clone()
    flipped[..., :4, :] = 1 - flipped[..., :4, :]
    assert dice_bce_loss(changed, flipped, ignore).item() == pytest.approx(loss.item(), rel=1e-6)


def test_scores_hand_case_and_mask():
    pred = np.array([[1, 1, 0, 0]], bool)
    truth = np.array([[1, 0, 1, 0]], bool)
    s = segmentation_scores(pred, truth)
    assert (s.accuracy, s.iou, s.dice, s.precision, s.recall) == (0.5, 1 / 3, 0.5, 0.5, 0.5)
    masked = segmentation_scores(pred, truth, mask=np.array([[1, 0, 0, 1]], bool))
    assert masked.accuracy == 1.0 and masked.iou == 1.0
    with pytest.raises(ValueError, match="shape"):
        segmentation_scores(pred, truth[:, :2])
