"""The exact per-sample route: per-example gradients of the segmentation loss w.r.t. trainable tensors.

The DP step takes the fast route (`fast_clip.FastClipper`: ghost norms and book-keeping, no B
copies of the trainable tensors); this module is the exact reference it is tested against and the
route it falls back to for any tensor no fast rule covers.

How: whole-model `torch.func` — `vmap(grad_and_value(loss of one example))` over the batch, with
`functional_call` substituting the chosen tensors (the only ones differentiated; frozen
parameters and buffers stay the module's own, non-differentiated). Each vmapped call sees a batch
of one, so SAM's windowed attention (blocks 0 and 2 of the tiny preset fold [B, 16, 16, C] into
[B * 4, 8, 8, C] windows) partitions and un-partitions one image and is right by construction.
Opacus's hooks (`GradSampleModule`) see a windowed block's linear layers with batch B * windows
and fail, and never see tensors used outside a forward (mask tokens, positional embeddings).

Measured before the fast route existed (the earlier `benchmarks/dp.py --routes`: tiny preset,
batch 8, 2 shared CPU cores): whole-batch vmap costs about one plain forward+backward (0.9-1.3x), a
Python loop over examples 1.6-2x that, vmap in chunks of one 3-4x; `chunk_size` only bounds memory.

Two things SamSegmenter's own forward does not allow under vmap, handled here with the model's own
submodules and `_decode`, giving the same values (`dense_forward`, also the fast route's forward):
- box mode picks the present (image, class) pairs with `nonzero` (data-dependent shape): here every
  (image, class) query is decoded and absent ones are set to ABSENT_LOGIT with `torch.where`
  (no gradient flows from them, as none flows from the constant in the model's forward);
- the loss's `one_hot` checks its input's values: the one-hot targets are made outside vmap and
  the loss is the same Dice + BCE on them (`per_example_loss`; a test checks it equals
  `SegmentationLoss`).
The batch loss is the mean of per-example losses (every example has the same number of pixels and
classes), so per-sample gradients summed and divided by B are the plain gradient.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from monai.losses import DiceLoss
from torch.nn import functional as F

from fedmed.models.segmenter import ABSENT_LOGIT, SamSegmenter
from fedmed.privacy.units import Units
from fedmed.train.loss import one_hot_foreground

def dense_forward(model: SamSegmenter, images: torch.Tensor, boxes: torch.Tensor | None,
                  present: torch.Tensor | None) -> torch.Tensor:
    """The segmenter's logits [B, K, S, S] without data-dependent shapes (vmap-safe); same values."""
    sam = model.sam
    embeddings = sam.image_encoder((images - sam.pixel_mean) / sam.pixel_std)
    classes = model.num_classes - 1
    if model.prompt == "none":
        low_res = model._decode(embeddings, None, list(range(classes)))
    else:
        if boxes is None or present is None:
            raise ValueError("prompt mode 'box' needs boxes [B, K, 4] and present [B, K]")
        batch, grid = embeddings.shape[0], embeddings.shape[-1] * 4
        per_query = embeddings.unsqueeze(1).expand(-1, classes, -1, -1, -1)
        queries = per_query.reshape(batch * classes, *embeddings.shape[1:])
        masks = model._decode(queries, boxes.reshape(batch * classes, 4), [0]).view(batch, classes, grid, grid)
        low_res = torch.where(present[:, :, None, None], masks, torch.full_like(masks, ABSENT_LOGIT))
    return F.interpolate(low_res, size=images.shape[-2:], mode="bilinear", align_corners=False)


class _Dense(nn.Module):
    """Holds the segmenter so `functional_call` can run `dense_forward` with substituted tensors."""

    def __init__(self, model: SamSegmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, boxes, present):
        return dense_forward(self.model, images, boxes, present)


def per_example_loss(dice: DiceLoss, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`SegmentationLoss` of each example [B] on float one-hot targets [B, K, S, S]; `dice` has reduction "none"."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return dice(logits, target).flatten(1).mean(1) + bce.flatten(1).mean(1)


class PerSampleGradients:
    """Per-sample gradients of `names` (default: all of `model.trainable_names`).

        grads, losses = PerSampleGradients(model)(images, boxes, present, masks)
        # grads[name]: [B, *param.shape], the gradient of example b's loss; losses: [B]

    `chunk_size` bounds how many examples vmap runs at once (memory); the result is the same.
    Reads the current parameter values on every call, so it survives optimizer steps.
    """

    def __init__(self, model: SamSegmenter, *, names=None, chunk_size: int | None = None,
                 mixed_precision: bool = False) -> None:
        self.model = model
        self.names = list(model.trainable_names if names is None else names)
        self.wrapper = _Dense(model)
        self.dice = DiceLoss(sigmoid=True, reduction="none")
        self.mixed_precision = mixed_precision
        self._vmapped = vmap(grad_and_value(self._loss_one), in_dims=(None, 0, 0, 0, 0), chunk_size=chunk_size)

    def _loss_one(self, trainable, image, boxes, present, target):
        logits = functional_call(self.wrapper, trainable, (image[None], boxes[None], present[None]))
        return per_example_loss(self.dice, logits.to(target.dtype), target[None])[0]

    def _autocast(self, device: torch.device):
        if self.mixed_precision and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor,
                 masks: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        params = dict(self.model.named_parameters())
        trainable = {"model." + name: params[name].detach() for name in self.names}
        dtype = params[self.names[0]].dtype
        target = one_hot_foreground(masks, self.model.num_classes).to(dtype)
        if images.shape[0] == 0:
            empty = {name: params[name].new_zeros((0, *params[name].shape)) for name in self.names}
            return empty, images.new_zeros((0,))
        with torch.no_grad(), self._autocast(images.device):  # tensors not in `names` may require grad
            grads, losses = self._vmapped(trainable, images, boxes, present, target)
        return {name: grads["model." + name] for name in self.names}, losses


def exact_clipped_sum(model: SamSegmenter, images: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor,
                      masks: torch.Tensor, units: Units, *, max_grad_norm: float
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The exact route's (clipped sums by name, unit norms [U]): per-example gradients summed per unit,
    each unit's sum clipped to `max_grad_norm` with Opacus's factor min(1, C / (norm + 1e-6)), summed."""
    grads, _ = PerSampleGradients(model)(images, boxes, present, masks)
    per_unit = {name: units.sum(grad) for name, grad in grads.items()}
    norms = torch.stack([grad.flatten(1).double().pow(2).sum(1) for grad in per_unit.values()]).sum(0).sqrt()
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # float64: a float32 norm of 11M values is off by 1e-4
    sums = {name: torch.einsum("u,u...->...", factors.to(grad.dtype), grad) for name, grad in per_unit.items()}
    return sums, norms.float()
