"""Box prompts from label masks, jittered in training as MedSAM and MSA do.

Under DP the jitter is part of the mechanism, so it must depend on nothing but the example and a
secret: `jitter_uniforms` draws each example's jitter from a ChaCha20 keystream keyed by the site's
own key (32 bytes of `os.urandom` per round) with a nonce from the example's label (its step and
id), so removing one example leaves every other example's box as it was, and the server, which
knows the federation's seed, cannot compute any of them. Plain (non-DP) training may still draw
jitter from a seeded `torch.Generator` by batch position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms


def jitter_uniforms(key: bytes, labels: Sequence[str], classes: int) -> torch.Tensor:
    """[len(labels), classes, 4] float32 uniforms in [0, 1), one independent stream per label.

    key: 32 secret bytes; labels: one string per example, unique within a round (e.g. f"{step}/{id}").
    """
    if len(key) != 32:
        raise ValueError(f"jitter key must be 32 bytes, got {len(key)}")
    count = classes * 4
    out = np.empty((len(labels), count), dtype=np.float64)
    for row, label in enumerate(labels):
        nonce = hashlib.sha256(label.encode()).digest()[:16]
        stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
        words = np.frombuffer(stream.update(bytes(8 * count)), dtype=np.uint64)
        out[row] = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return torch.from_numpy(out).float().clamp_(max=1.0 - 2.0**-24).reshape(len(labels), classes, 4)


def boxes_from_masks(
    masks: torch.Tensor, num_classes: int, *, jitter: float = 0.0, generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes per foreground class.

    masks: [B, S, S] int64 label maps. Returns boxes [B, K, 4] float32 (x0, y0, x1, y1 in pixels, K =
    num_classes - 1) and present [B, K] bool. With `jitter` > 0 each corner moves by up to
    jitter * (box side) pixels, by uniforms in [0, 1) from `uniforms` [B, K, 4] (DP: per-example,
    `jitter_uniforms`) or else drawn from `generator`; boxes stay inside the image.
    """
    batch, height, width = masks.shape
    classes = num_classes - 1
    boxes = torch.zeros(batch, classes, 4)
    present = torch.zeros(batch, classes, dtype=torch.bool)
    for k in range(classes):
        hit = masks == (k + 1)
        rows, cols = hit.any(dim=2), hit.any(dim=1)
        present[:, k] = rows.any(dim=1)
        index_y = torch.arange(height).expand(batch, -1)
        index_x = torch.arange(width).expand(batch, -1)
        boxes[:, k, 0] = torch.where(cols, index_x, width).min(dim=1).values.float()
        boxes[:, k, 1] = torch.where(rows, index_y, height).min(dim=1).values.float()
        boxes[:, k, 2] = torch.where(cols, index_x, -1).max(dim=1).values.float()
        boxes[:, k, 3] = torch.where(rows, index_y, -1).max(dim=1).values.float()
    boxes[~present] = 0.0
    if jitter > 0:
        if uniforms is None:
            uniforms = torch.rand(boxes.shape, generator=generator)
        elif uniforms.shape != boxes.shape:
            raise ValueError(f"uniforms must be {list(boxes.shape)} (batch, classes, 4), got {list(uniforms.shape)}")
        side = torch.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], dim=-1).repeat(1, 1, 2)
        noise = (uniforms * 2 - 1) * jitter * (side + 1)
        boxes = boxes + noise.round()
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width - 1)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height - 1)
        boxes[~present] = 0.0
    return boxes, present
