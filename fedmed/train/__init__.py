"""Local training and evaluation of a SamSegmenter on one site's data."""

from fedmed.train.evaluate import evaluate
from fedmed.train.loop import TrainConfig, TrainResult, make_optimizer, resolve_device, train_local, training_step
from fedmed.train.loss import SegmentationLoss, one_hot_foreground
from fedmed.train.prompts import boxes_from_masks

__all__ = [
    "SegmentationLoss",
    "TrainConfig",
    "TrainResult",
    "boxes_from_masks",
    "evaluate",
    "make_optimizer",
    "one_hot_foreground",
    "resolve_device",
    "train_local",
    "training_step",
]
