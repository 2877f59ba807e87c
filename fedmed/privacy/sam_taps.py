"""SAM's trainable tensors used outside any layer's forward, and where their per-unit gradients show.

`fedsam` trains the encoder's positional embedding, and the decoder's IoU and mask tokens and the
prompt encoder's box-corner and no-mask embeddings train in `fedsam`, `fedmsa` and `samed` (mask
tokens in `flap-sam` too). SAM never calls these as layers: it reads `.weight` or adds the tensor.
Each enters the network broadcast over the batch at a known input of a known layer, so its
per-example gradient is the gradient of that input, summed over what the broadcast spread:

| tensor | enters as | per-row gradient |
| --- | --- | --- |
| `image_encoder.pos_embed` [1, H, W, C] | + input of encoder block 0 [B, H, W, C] | that input's gradient |
| `mask_decoder.iou_token.weight` [1, C] | token 0 of the transformer's queries [N, Q, C] | token 0 of theirs |
| `mask_decoder.mask_tokens.weight` [M, C] | tokens 1..M of the queries | tokens 1..M |
| `prompt_encoder.point_embeddings.{2,3}.weight` | + box-corner tokens M+1, M+2 (box prompts) | those tokens |
| `prompt_encoder.no_mask_embed.weight` [1, C] | + every pixel of the image input [N, C, h, w] | summed over pixels |

This follows `SamSegmenter._decode` (queries = [iou token, mask tokens, box corners]). If that
changes, the fast route's first step sees a use count that does not match the autograd graph and
moves the tensor to the exact route (`fast_clip.FastClipper`); the exactness tests compare both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedmed.models.segmenter import SamSegmenter


@dataclass(frozen=True)
class EntryTap:
    """Where tensor `name` enters: argument `arg` of `module`; `per_row(grad of that argument)` -> [R, *shape].

    `applies(argument)` says whether this call uses the tensor (box corners exist only with boxes).
    """

    name: str
    module: nn.Module
    arg: int
    per_row: Callable[[torch.Tensor], torch.Tensor]
    applies: Callable[[torch.Tensor], bool] = lambda argument: True


def sam_entry_taps(model: SamSegmenter, trainable: set[str]) -> list[EntryTap]:
    """The entry taps of `model`'s trainable tensors (names as in `model.named_parameters()`) that need one."""
    sam = model.sam
    transformer = sam.mask_decoder.transformer
    tokens = sam.mask_decoder.mask_tokens.num_embeddings
    corners = 1 + tokens  # first box-corner token in the queries
    taps = [
        EntryTap("sam.image_encoder.pos_embed", sam.image_encoder.blocks[0], 0, lambda g: g.unsqueeze(1)),
        EntryTap("sam.mask_decoder.iou_token.weight", transformer, 2, lambda g: g[:, :1]),
        EntryTap("sam.mask_decoder.mask_tokens.weight", transformer, 2, lambda g: g[:, 1:corners]),
        EntryTap("sam.prompt_encoder.point_embeddings.2.weight", transformer, 2, lambda g: g[:, corners:corners + 1],
                 lambda queries: queries.shape[1] == corners + 2),
        EntryTap("sam.prompt_encoder.point_embeddings.3.weight", transformer, 2,
                 lambda g: g[:, corners + 1:corners + 2], lambda queries: queries.shape[1] == corners + 2),
        EntryTap("sam.prompt_encoder.no_mask_embed.weight", transformer, 0, lambda g: g.sum((2, 3)).unsqueeze(1)),
    ]
    return [tap for tap in taps if tap.name in trainable]
