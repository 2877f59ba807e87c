"""Per-sample gradients (whole-model vmap) against a loop over single examples, for every method.

float32: SAM's prompt encoder casts box coordinates to float32, so box mode cannot run in float64;
the vmapped and looped gradients agree to ~1e-7 in float32, well inside atol 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from fedmed.models import DEFAULT_PROMPT, METHODS
from fedmed.privacy import PerSampleGradients, dense_forward
from fedmed.train import SegmentationLoss, boxes_from_masks

from privacy_helpers import make_batch, perturbed_model

CASES = [(method, prompt) for method in METHODS for prompt in ("box", "none")]


def _single_example_grads(model, images, boxes, present, masks):
    loss_fn = SegmentationLoss(model.num_classes)
    params = dict(model.named_parameters())
    tensors = [params[name] for name in model.trainable_names]
    out, losses = [], []
    for i in range(len(images)):
        loss = loss_fn(model(images[i : i + 1], boxes[i : i + 1], present[i : i + 1]), masks[i : i + 1])
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        named = zip(model.trainable_names, tensors, grads)
        out.append({n: torch.zeros_like(t) if g is None else g for n, t, g in named})
        losses.append(loss.detach())
    return out, torch.stack(losses)


@pytest.mark.parametrize(("method", "prompt"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_per_sample_gradients_equal_single_example_loop(method, prompt):
    model = perturbed_model(method, prompt=prompt)
    batch = make_batch(2)
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes, jitter=0.1,
                                      generator=torch.Generator().manual_seed(3))
    assert not present.all(), "the batch must have an absent class (box mode's masked query)"
    grads, losses = PerSampleGradients(model)(batch["image"], boxes, present, batch["mask"])
    expected, expected_losses = _single_example_grads(model, batch["image"], boxes, present, batch["mask"])

    assert list(grads) == model.trainable_names
    torch.testing.assert_close(losses, expected_losses, atol=1e-6, rtol=1e-5)
    largest = 0.0
    for name in model.trainable_names:
        assert grads[name].shape == (2, *dict(model.named_parameters())[name].shape)
        for i in range(2):
            torch.testing.assert_close(grads[name][i], expected[i][name], atol=1e-6, rtol=1e-4, msg=name)
            largest = max(largest, float(expected[i][name].abs().max()))
    assert largest > 1e-3  # the comparison is not between zeros


def test_windowed_blocks_fold_the_batch():
    """The tiny preset's windowed blocks really fold the batch: [B, 16, 16, C] -> [B * 4, 8, 8, C]."""
    model = perturbed_model("flap-sam")
    blocks = [b for b in model.sam.image_encoder.blocks if b.window_size > 0]
    seen = []
    hook = blocks[0].attn.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    batch = make_batch(2)
    model(batch["image"])
    hook.remove()
    assert blocks and seen[0][0] == 2 * 4


@pytest.mark.parametrize("method", ["fedmsa"])
def test_mean_of_per_sample_gradients_is_the_batch_gradient(method):
    """Summed per-sample gradients / B equal the plain batch gradient through the model's own forward
    (so the dense box decoding and the loss on one-hot targets compute what training computes)."""
    model = perturbed_model(method, prompt=DEFAULT_PROMPT[method])
    batch = make_batch(3)
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes)
    grads, _ = PerSampleGradients(model, chunk_size=2)(batch["image"], boxes, present, batch["mask"])
    params = dict(model.named_parameters())
    tensors = [params[n] for n in model.trainable_names]
    loss = SegmentationLoss(model.num_classes)(model(batch["image"], boxes, present), batch["mask"])
    batch_grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    for name, expected in zip(model.trainable_names, batch_grads):
        expected = torch.zeros_like(params[name]) if expected is None else expected
        torch.testing.assert_close(grads[name].mean(0), expected, atol=1e-6, rtol=1e-4, msg=name)


def test_dense_forward_equals_the_segmenter_forward():
    model = perturbed_model("fedmsa", prompt="box")
    batch = make_batch(2)
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes)
    with torch.no_grad():
        torch.testing.assert_close(dense_forward(model, batch["image"], boxes, present),
                                   model(batch["image"], boxes, present), atol=1e-5, rtol=1e-5)


def test_empty_batch_gives_empty_gradients():
    model = perturbed_model("flap-sam")
    batch = make_batch(2)
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes)
    grads, losses = PerSampleGradients(model)(batch["image"][:0], boxes[:0], present[:0], batch["mask"][:0])
    assert losses.shape == (0,)
    params = dict(model.named_parameters())
    assert all(grads[n].shape == (0, *params[n].shape) for n in model.trainable_names)
