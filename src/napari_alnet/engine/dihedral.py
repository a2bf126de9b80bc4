"""The 8 flips/transposes of an image's last two axes (test-time augmentation and training crops), for NumPy
arrays and torch tensors alike. Transform ``k``: bit 4 transposes, then bit 1 flips Y, bit 2 flips X."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

A = TypeVar("A", np.ndarray, torch.Tensor)


def _transpose(x: A) -> A:
    return x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)


def _flip(x: A, axis: int) -> A:
    return x.flip(axis) if isinstance(x, torch.Tensor) else np.flip(x, axis)


def dihedral(x: A, k: int) -> A:
    """Transform ``k`` (0-7) of the last two axes (0 = identity); NumPy results are views."""
    if k & 4:
        x = _transpose(x)
    if k & 1:
        x = _flip(x, -2)
    if k & 2:
        x = _flip(x, -1)
    return x


def undo_dihedral(x: A, k: int) -> A:
    """The inverse of ``dihedral(x, k)``."""
    if k & 2:
        x = _flip(x, -1)
    if k & 1:
        x = _flip(x, -2)
    if k & 4:
        x = _transpose(x)
    return x
