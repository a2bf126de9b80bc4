"""Training engine (no Qt): datasets of (image, mask[, ignore]) pairs and the AL-Net training loop."""

from .data import Pair, load_pairs, pairs_from_arrays
from .loop import TrainConfig, Trainer, TrainResult, TrainState, train, train_job

__all__ = ["Pair", "TrainConfig", "TrainResult", "TrainState", "Trainer", "load_pairs", "pairs_from_arrays", "train",
           "train_job"]
