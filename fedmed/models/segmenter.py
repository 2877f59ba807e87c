"""SamSegmenter: a SAM that maps a batch of images (and optional box prompts) to per-class logits.

SAM's own `MaskDecoder.forward` assumes one image per call (it repeats the image embedding for every
prompt), so training on a batch would mix images. `_decode` runs the same decoder submodules with
one image embedding per query, so parameter names and the pretrained computation are unchanged.

Prompt modes:
- "box": one query per (image, present foreground class) with that class's box; SAM's single-mask
  output token. Classes absent from an image get a constant logit of ABSENT_LOGIT.
- "none": one query per image with no prompt (as FLAP-SAM and SAMed train); foreground class k is
  read from mask token k, so at most `num_mask_tokens` (4) foreground classes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PROMPT_MODES = ("box", "none")
ABSENT_LOGIT = -20.0


class SamSegmenter(nn.Module):
    """SAM with a batched, per-class segmentation forward.

    `num_classes` counts the background; the model outputs `num_classes - 1` foreground channels.
    """

    def __init__(self, sam: nn.Module, *, num_classes: int = 2, prompt: str = "box") -> None:
        super().__init__()
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}")
        num_foreground = num_classes - 1
        if num_foreground < 1:
            raise ValueError(f"num_classes must be at least 2 (background + 1), got {num_classes}")
        if prompt == "none" and num_foreground > sam.mask_decoder.num_mask_tokens:
            raise ValueError(
                f"prompt 'none' gives one mask token per class: at most {sam.mask_decoder.num_mask_tokens} "
                f"foreground classes, got {num_foreground}; use prompt 'box'"
            )
        self.sam = sam
        self.num_classes = num_classes
        self.prompt = prompt

    @property
    def image_size(self) -> int:
        return self.sam.image_encoder.img_size

    def forward(
        self, images: torch.Tensor, boxes: torch.Tensor | None = None, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-class logits [B, K, S, S] for images [B, 3, S, S] in 0..255 (K = num_classes - 1).

        In "box" mode, `boxes` [B, K, 4] (x0, y0, x1, y1 in input pixels) and `present` [B, K] bool
        say which class is in which image.
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images must be [B, 3, {self.image_size}, {self.image_size}], got {list(images.shape)}")
        embeddings = self.sam.image_encoder((images - self.sam.pixel_mean) / self.sam.pixel_std)
        if self.prompt == "none":
            low_res = self._decode(embeddings, None, list(range(self.num_classes - 1)))
        else:
            low_res = self._decode_boxes(embeddings, boxes, present)
        return F.interpolate(low_res, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _decode_boxes(self, embeddings: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        if boxes is None or present is None:
            raise ValueError("prompt mode 'box' needs boxes [B, K, 4] and present [B, K]")
        batch, classes = present.shape
        image_index, class_index = present.nonzero(as_tuple=True)
        grid = embeddings.shape[-1] * 4
        out = embeddings.new_full((batch, classes, grid, grid), ABSENT_LOGIT)
        if image_index.numel():
            chosen = embeddings[image_index]
            masks = self._decode(chosen, boxes[image_index, class_index], [0])
            out = out.index_put((image_index, class_index), masks[:, 0])
        return out

    def _decode(self, embeddings: torch.Tensor, boxes: torch.Tensor | None, tokens: list[int]) -> torch.Tensor:
        """Low-res mask logits [N, len(tokens), 4h, 4w] for embeddings [N, C, h, w], boxes [N, 4] or None."""
        prompt_encoder, decoder = self.sam.prompt_encoder, self.sam.mask_decoder
        sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
        count = embeddings.shape[0]
        if sparse.shape[0] != count:  # no prompt: the prompt encoder made a batch of one
            sparse = sparse.expand(count, -1, -1)
            dense = dense.expand(count, -1, -1, -1)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        queries = torch.cat([output_tokens.unsqueeze(0).expand(count, -1, -1), sparse], dim=1)
        src = embeddings + dense
        pos = prompt_encoder.get_dense_pe().expand(count, -1, -1, -1)
        hidden, src = decoder.transformer(src, pos, queries)
        channels, height, width = embeddings.shape[1:]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(count, channels, height, width))
        hyper = torch.stack([decoder.output_hypernetworks_mlps[t](hidden[:, 1 + t]) for t in tokens], dim=1)
        return (hyper @ upscaled.flatten(2)).view(count, len(tokens), *upscaled.shape[-2:])


def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Label map [B, S, S] (0 = background) from per-class logits [B, K, S, S]."""
    best, index = logits.max(dim=1)
    return torch.where(best > 0, index + 1, torch.zeros_like(index))
