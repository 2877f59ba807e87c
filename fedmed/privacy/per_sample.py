"""Per-sample gradients of the segmentation loss w.r.t. exactly the method's trainable tensors.

How: whole-model `torch.func` — `vmap(grad_and_value(loss of one example))` over the batch, with
`functional_call` substituting the trainable tensors (the only ones differentiated; frozen
parameters and buffers stay the module's own, non-differentiated). Each vmapped call sees a batch
of one, so SAM's windowed attention (blocks 0 and 2 of the tiny preset fold [B, 16, 16, C] into
[B * 4, 8, 8, C] windows) partitions and un-partitions one image and is right by construction.

Why not the alternatives:
- Opacus's hooks (`GradSampleModule`) see a windowed block's linear layers with batch B * windows
  and fail (`stack expects each tensor to be equal size`); they also never see tensors used as
  `.weight` outside a forward (`mask_tokens`, `iou_token`, prompt embeddings), nor `pos_embed` or
  the relative-position tables, all of which `fedsam` trains and `flap-sam` (mask tokens) too.
  Custom grad samplers for the LoRA and adapter layers that fold windows back would cover only
  some methods and need one per module type; ghost clipping rests on the same hooks and saves
  nothing when the trainable tensors are small (adapters, LoRA).
- A per-layer functorch route breaks the same way as the hooks; a Python loop over examples is
  correct but runs B small forwards.

Measured (`python benchmarks/dp.py --routes`: tiny preset, batch 8, 2 shared CPU cores, medians of
7 interleaved runs, seconds for the per-sample gradients of the batch; "plain" is one ordinary
forward+backward of the batch for reference):

    method     plain   vmap   vmap, chunks of 1   loop over examples
    fedsam     4.77    5.29   16.4                8.21
    fedmsa     0.311   0.275   1.00               0.533
    flap-sam   0.230   0.293   0.946              0.494
    samed      0.222   0.255   0.813              0.453

Whole-batch vmap costs about one plain backward (0.9-1.3x) and is 1.6-2x faster than the loop and
3-4x faster than vmap in chunks of one, so it is the route; `chunk_size` is there only to bound
memory for big models and batches (per-sample gradients take B x trainable tensors).

Two things SamSegmenter's own forward does not allow under vmap, handled here with the model's own
submodules and `_decode`, giving the same values:
- box mode picks the present (image, class) pairs with `nonzero` (data-dependent shape): here every
  (image, class) query is decoded and absent ones are set to ABSENT_LOGIT with `torch.where`
  (no gradient flows from them, as none flows from the constant in the model's forward);
- the loss's `one_hot` checks its input's values: the one-hot targets are made outside vmap and
  the loss is the same Dice + BCE on them (a test checks it equals `SegmentationLoss`).
The batch loss is the mean of per-example losses (every example has the same number of pixels and
classes), so per-sample gradients summed and divided by B are the plain gradient.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from fedmed.models.segmenter import ABSENT_LOGIT, SamSegmenter
from fedmed.train.loss import SegmentationLoss, one_hot_foreground

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


def loss_on_targets(loss_fn: SegmentationLoss, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`SegmentationLoss` on float one-hot targets [B, K, S, S] instead of label maps."""
    return loss_fn.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


class PerSampleGradients:
    """Per-sample gradients for a segmenter's trainable tensors (`model.trainable_names`).

        grads, losses = PerSampleGradients(model)(images, boxes, present, masks)
        # grads[name]: [B, *param.shape], the gradient of example b's loss; losses: [B]

    `chunk_size` bounds how many examples vmap runs at once (memory); the result is the same.
    Reads the current parameter values on every call, so it survives optimizer steps.
    """

    def __init__(self, model: SamSegmenter, *, chunk_size: int | None = None, mixed_precision: bool = False) -> None:
        self.model = model
        self.names = list(model.trainable_names)
        self.wrapper = _Dense(model)
        self.loss_fn = SegmentationLoss(model.num_classes)
        self.mixed_precision = mixed_precision
        self._vmapped = vmap(grad_and_value(self._loss_one), in_dims=(None, 0, 0, 0, 0), chunk_size=chunk_size)

    def _loss_one(self, trainable, image, boxes, present, target):
        logits = functional_call(self.wrapper, trainable, (image[None], boxes[None], present[None]))
        return loss_on_targets(self.loss_fn, logits.to(target.dtype), target[None])

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
        with self._autocast(images.device):
            grads, losses = self._vmapped(trainable, images, boxes, present, target)
        return {name: grads["model." + name] for name in self.names}, losses
