"""Training engine (no Qt): datasets of (image, mask[, ignore]) pairs and the AL-Net training loop."""

from .data import Pair, load_pairs, pairs_from_arrays
from .loop import TrainConfig, TrainResult, train, train_job

__all__ = ["Pair", "TrainConfig", "TrainResult", "load_pairs", "pairs_from_arrays", "train", "train_job"]
