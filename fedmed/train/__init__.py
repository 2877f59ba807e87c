"""Local training and evaluation of a SamSegmenter on one site's data, by a recipe."""

from fedmed.train.augment import augmented
from fedmed.train.evaluate import validate
from fedmed.train.loop import TrainConfig, TrainResult, make_optimizer, resolve_device, train_local, training_step
from fedmed.train.loss import LOSSES, SegmentationLoss, make_loss, one_hot_foreground, recipe_loss
from fedmed.train.optim import OptimizerStateError
from fedmed.train.prompts import boxes_from_masks
from fedmed.train.schedule import lr_at, planned_total_steps

__all__ = [
    "LOSSES",
    "OptimizerStateError",
    "SegmentationLoss",
    "TrainConfig",
    "TrainResult",
    "augmented",
    "boxes_from_masks",
    "lr_at",
    "make_loss",
    "make_optimizer",
    "one_hot_foreground",
    "planned_total_steps",
    "recipe_loss",
    "resolve_device",
    "train_local",
    "training_step",
    "validate",
]
