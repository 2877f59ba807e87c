"""SAM architecture presets and the one builder behind them.

Shapes: an image of `image_size` px is cut into `patch_size` px patches, giving an embedding grid of
`image_size // patch_size` per side; the mask decoder predicts masks at 4x that grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from fedmed.models.sam_import import import_sam_modeling


@dataclass(frozen=True)
class ArchSpec:
    """Hyper-parameters of one SAM architecture."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256


ARCH_PRESETS: dict[str, ArchSpec] = {
    "vit_b": ArchSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": ArchSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": ArchSpec(1280, 32, 16, (7, 15, 23, 31)),
    # A CPU-sized SAM: 4 blocks of width 96, 128 px with 8 px patches (a 16x16 grid, 4 attention
    # windows of 8x8 in the windowed blocks), a 64-wide decoder. Same code paths as the real ones.
    "tiny": ArchSpec(
        embed_dim=96,
        depth=4,
        num_heads=4,
        global_attn_indexes=(1, 3),
        image_size=128,
        patch_size=8,
        window_size=8,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        mask_in_chans=8,
        iou_head_hidden_dim=64,
    ),
}


class UnknownArchError(ValueError):
    """An architecture name that is not a preset."""


def arch_spec(arch: str) -> ArchSpec:
    """The preset called `arch`, or a clear error listing the presets."""
    try:
        return ARCH_PRESETS[arch]
    except KeyError:
        raise UnknownArchError(f"unknown architecture {arch!r}; choose one of {sorted(ARCH_PRESETS)}") from None


def build_sam(arch: str, *, image_size: int | None = None, num_multimask_outputs: int = 3) -> nn.Module:
    """Build a randomly initialised SAM (`segment_anything.modeling.Sam`) of a preset architecture.

    `image_size` (px, a multiple of the patch size) overrides the preset's input size;
    `num_multimask_outputs` + 1 is the decoder's number of mask tokens (SAM's: 3 + 1).
    """
    spec = arch_spec(arch)
    size = image_size or spec.image_size
    if size % spec.patch_size:
        raise ValueError(f"image_size {size} is not a multiple of the patch size {spec.patch_size}")
    modeling = import_sam_modeling()
    grid = size // spec.patch_size
    sam = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=size,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=4,
            out_chans=spec.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=spec.window_size,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(size, size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=num_multimask_outputs,
            transformer=modeling.TwoWayTransformer(
                depth=2,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam
