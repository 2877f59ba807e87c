"""Run a trained model over the slices of an input case and return its label map at the input's size.

Slices go through the model in batches at its input size (S x S, stretched as in training); the
per-class logits [B, K, S, S] are resized bilinearly back to the slice's own size before the
labels are taken (`predict_labels`: the best class if its logit is positive, else background),
so the label map lies on the input's grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from fedmed.inference.bundle import ModelBundle, build_segmenter
from fedmed.inference.case import InputCase
from fedmed.models.segmenter import predict_labels

PromptMode = Literal["none", "boxes", "oracle-boxes"]
"""How a model is prompted: `none` (no prompt), `boxes` (from a file), `oracle-boxes` (cut from the
ground truth; only `fedmed evaluate`, to compare with papers that report it)."""


class Predictor:
    """A built model on a device, predicting label maps for input cases."""

    def __init__(self, bundle: ModelBundle, *, prompt: PromptMode = "none", checkpoint: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8):
        self.bundle, self.prompt, self.batch_size = bundle, prompt, batch_size
        self.device = torch.device(device)
        self.model = build_segmenter(bundle, prompt="none" if prompt == "none" else "box",
                                     checkpoint=checkpoint).to(self.device)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @torch.no_grad()
    def labels(self, case: InputCase, boxes: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
        """Label map uint8 [H, W] (picture) or [X, Y, Z] (canonical volume) of class indices.

        `boxes` = (boxes [N, K, 4] at the model's input size, present [N, K]) for the N slices, in the
        box prompt modes.
        """
        if (boxes is None) != (self.prompt == "none"):
            raise ValueError(f"prompt mode {self.prompt!r} {'takes no' if self.prompt == 'none' else 'needs'} boxes")
        out = np.zeros((*case.plane, case.num_slices), dtype=np.uint8)
        for start in range(0, case.num_slices, self.batch_size):
            indices = range(start, min(start + self.batch_size, case.num_slices))
            images = case.model_input(indices, self.image_size).to(self.device)
            prompt = (None, None) if boxes is None else (boxes[0][start:indices.stop].to(self.device),
                                                          boxes[1][start:indices.stop].to(self.device))
            logits = self.model(images, *prompt).float()
            logits = F.interpolate(logits, size=case.plane, mode="bilinear", align_corners=False)
            out[:, :, indices.start:indices.stop] = predict_labels(logits).permute(1, 2, 0).cpu().numpy()
        return out if case.is_volume else out[:, :, 0]
