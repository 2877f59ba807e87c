"""SAM models: presets, checkpoint loading, the fine-tuning methods and the batched segmenter."""

from fedmed.models.checkpoint import CheckpointError, LoadReport, load_sam_checkpoint, read_state_dict
from fedmed.models.factory import (
    DEFAULT_PROMPT,
    ModelConfig,
    TrainableStateError,
    build_model,
    load_trainable_state,
    trainable_state,
    trainable_tensor_names,
)
from fedmed.models.methods import METHODS, MethodOptions, UnknownMethodError, apply_method, get_method
from fedmed.models.presets import ARCH_PRESETS, ArchSpec, UnknownArchError, arch_spec, build_sam
from fedmed.models.segmenter import PROMPT_MODES, SamSegmenter, predict_labels

__all__ = [
    "ARCH_PRESETS",
    "DEFAULT_PROMPT",
    "METHODS",
    "PROMPT_MODES",
    "ArchSpec",
    "CheckpointError",
    "LoadReport",
    "MethodOptions",
    "ModelConfig",
    "SamSegmenter",
    "TrainableStateError",
    "UnknownArchError",
    "UnknownMethodError",
    "apply_method",
    "arch_spec",
    "build_model",
    "build_sam",
    "get_method",
    "load_sam_checkpoint",
    "load_trainable_state",
    "predict_labels",
    "read_state_dict",
    "trainable_state",
    "trainable_tensor_names",
]
