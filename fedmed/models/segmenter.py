"""SamSegmenter: a SAM that maps a batch of images (and optional box prompts) to per-class logits.

SAM's own `MaskDecoder.forward` assumes one image per call (it repeats the image embedding for every
prompt), so training on a batch would mix images. `_decode` runs the same decoder submodules with
one image embedding per query, so parameter names and the pretrained computation are unchanged.

Prompt modes:
- "box": one query per (image, present foreground class) with that class's box; SAM's single-mask
  output token. Classes absent from an image get a constant logit of ABSENT_LOGIT.
- "none": one query per image with no prompt (as FLAP-SAM and SAMed train); the head
  (`fedmed.models.heads`) says which mask tokens are read and how they become class logits. SAM's
  own head reads foreground class k from mask token k, so at most `num_mask_tokens` (4) classes.

Input scaling ("sam": SAM's (x - mean) / std on 0..255; "unit": x / 255, as FedFMS and FLAP-SAM
feed their [0, 1] images with no mean/std) is part of the model, so training and evaluation agree.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedmed.models.heads import Head, get_head

PROMPT_MODES = ("box", "none")
INPUT_NORMS = ("sam", "unit")
ABSENT_LOGIT = -20.0


class SamSegmenter(nn.Module):
    """SAM with a batched, per-class segmentation forward.

    `num_classes` counts the background; the model outputs `num_classes - 1` foreground channels.
    `head` is a `fedmed.models.heads` name; its decoder must already be built (`Head.build`).
    """

    def __init__(
        self, sam: nn.Module, *, num_classes: int = 2, prompt: str = "box", head: str = "sam", input_norm: str = "sam"
    ) -> None:
        super().__init__()
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES}, got {prompt!r}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        num_foreground = num_classes - 1
        if num_foreground < 1:
            raise ValueError(f"num_classes must be at least 2 (background + 1), got {num_classes}")
        self.head_kind = get_head(head).kind  # the name, so the module pickles; `head` looks it up
        if head != "sam" and prompt != "none":
            raise ValueError(f"the {head!r} head decodes without prompts; it needs prompt 'none', got {prompt!r}")
        if prompt == "none" and max(self.head.tokens(num_classes)) >= sam.mask_decoder.num_mask_tokens:
            raise ValueError(
                f"prompt 'none' gives one mask token per class: at most {sam.mask_decoder.num_mask_tokens} "
                f"foreground classes, got {num_foreground}; use prompt 'box'"
            )
        self.sam = sam
        self.num_classes = num_classes
        self.prompt = prompt
        self.input_norm = input_norm

    @property
    def head(self) -> Head:
        """The decoder head (`fedmed.models.heads`)."""
        return get_head(self.head_kind)

    @property
    def activation(self) -> str:
        """"sigmoid": each channel is its own class's logit; "softmax": logits relative to the background."""
        return self.head.activation

    @property
    def image_size(self) -> int:
        return self.sam.image_encoder.img_size

    def forward(
        self, images: torch.Tensor, boxes: torch.Tensor | None = None, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-class logits [B, K, S, S] for images [B, 3, S, S] in 0..255 (K = num_classes - 1).

        In "box" mode, `boxes` [B, K, 4] (x0, y0, x1, y1 in input pixels) and `present` [B, K] bool
        say which class is in which image. In "none" mode the forward has no data-dependent shapes
        (it runs under `torch.func.vmap`).
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images must be [B, 3, {self.image_size}, {self.image_size}], got {list(images.shape)}")
        embeddings = self.sam.image_encoder(self.scale_input(images))
        if self.prompt == "none":
            tokens = self.head.tokens(self.num_classes)
            masks = self._decode(embeddings, None, tokens, prompt_embeddings=self.head.prompt_embeddings)
            low_res = self.head.to_logits(self.sam.mask_decoder, masks)
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

    def scale_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images in 0..255 -> the encoder's input scale (`input_norm`)."""
        if self.input_norm == "unit":
            return images / 255.0
        return (images - self.sam.pixel_mean) / self.sam.pixel_std

    def _decode(
        self, embeddings: torch.Tensor, boxes: torch.Tensor | None, tokens: list[int], *, prompt_embeddings: bool = True
    ) -> torch.Tensor:
        """Mask logits [N, len(tokens), u*h, u*w] for embeddings [N, C, h, w], boxes [N, 4] or None.

        u is the head's upscaling (4 for SAM's). `prompt_embeddings=False` decodes from the output
        tokens and the image embedding alone (no sparse prompt tokens, no dense embedding added).
        """
        prompt_encoder, decoder = self.sam.prompt_encoder, self.sam.mask_decoder
        count = embeddings.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        queries = output_tokens.unsqueeze(0).expand(count, -1, -1)
        src = embeddings
        if prompt_embeddings:
            sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
            if sparse.shape[0] != count:  # no prompt: the prompt encoder made a batch of one
                sparse = sparse.expand(count, -1, -1)
                dense = dense.expand(count, -1, -1, -1)
            queries = torch.cat([queries, sparse], dim=1)
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
