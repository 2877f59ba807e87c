"""The fast route (ghost norms, book-keeping) against the exact per-sample route, for every method.

float32 throughout (box mode cannot run in float64, see test_privacy_per_sample.py). The clip norm
sits between the examples' norms, so some examples are clipped and some are not.
"""

from __future__ import annotations

import pytest
import torch

from fedmed.models import METHODS
from fedmed.models.sam_import import import_sam_modeling
from fedmed.privacy import FastClipper, Units, exact_clipped_sum
from fedmed.privacy import fast_clip as fast_clip_module
from fedmed.train import SegmentationLoss, boxes_from_masks

from privacy_helpers import make_batch, perturbed_model

CASES = [(method, prompt) for method in METHODS for prompt in ("box", "none")]


def _inputs(model, batch_size: int, *, seed: int = 0):
    batch = make_batch(batch_size, seed=seed)
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes, jitter=0.1,
                                      generator=torch.Generator().manual_seed(3))
    return batch["image"], boxes, present, batch["mask"]


def _flat(sums: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([sums[name].flatten() for name in names])


def assert_same_clipped_sum(fast: dict, exact: dict, names: list[str]) -> None:
    """Within 1e-5 relative over all tensors together, and tensor by tensor up to float32 noise."""
    fast_flat, exact_flat = _flat(fast, names), _flat(exact, names)
    scale = float(exact_flat.norm())
    assert scale > 1e-4, "the comparison must not be between zeros"
    assert float((fast_flat - exact_flat).norm()) <= 1e-5 * scale
    for name in names:  # tensors whose gradient is zero in exact arithmetic (key biases) differ by ~1e-10
        torch.testing.assert_close(fast[name], exact[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize(("method", "prompt"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_fast_route_equals_exact_route(method, prompt):
    model = perturbed_model(method, prompt=prompt)
    inputs = _inputs(model, 4)
    units = Units.singletons(4)
    _, norms = exact_clipped_sum(model, *inputs, units, max_grad_norm=1e9)
    clip = float(norms.sort().values[1:3].mean())  # two examples above, two below
    clipper = FastClipper(model)
    fast, fast_norms, losses = clipper(*inputs, units, max_grad_norm=clip)
    exact, exact_norms = exact_clipped_sum(model, *inputs, units, max_grad_norm=clip)

    assert int((exact_norms > clip).sum()) == 2
    assert clipper.route.exact == (), "every trainable tensor takes the fast route"
    torch.testing.assert_close(fast_norms, exact_norms, rtol=2e-5, atol=0.0)
    assert_same_clipped_sum(fast, exact, model.trainable_names)
    expected_loss = SegmentationLoss(model.num_classes)(model(*inputs[:3]), inputs[3])
    torch.testing.assert_close(losses.mean(), expected_loss, atol=1e-6, rtol=1e-5)


def test_patient_units_equal_the_exact_route_on_units():
    model = perturbed_model("fedmsa", prompt="box")
    inputs = _inputs(model, 5)
    units = Units.of_labels([7, 7, 3, 9, 9])
    _, norms = exact_clipped_sum(model, *inputs, units, max_grad_norm=1e9)
    clip = float(norms.median())
    fast, fast_norms, _ = FastClipper(model)(*inputs, units, max_grad_norm=clip)
    exact, exact_norms = exact_clipped_sum(model, *inputs, units, max_grad_norm=clip)
    torch.testing.assert_close(fast_norms, exact_norms, rtol=2e-5, atol=0.0)
    assert_same_clipped_sum(fast, exact, model.trainable_names)


def test_a_tensor_no_rule_sees_falls_back_to_the_exact_route(monkeypatch):
    """Without the entry taps, SAM's tokens are used in the graph but seen by no rule: the route check
    must send them to the exact route rather than report a zero gradient for them."""
    monkeypatch.setattr(fast_clip_module, "sam_entry_taps", lambda model, trainable: [])
    model = perturbed_model("flap-sam", prompt="none")
    inputs = _inputs(model, 3)
    units = Units.singletons(3)
    clipper = FastClipper(model)
    fast, _, _ = clipper(*inputs, units, max_grad_norm=0.05)
    exact, _ = exact_clipped_sum(model, *inputs, units, max_grad_norm=0.05)
    assert clipper.route.exact == ("sam.mask_decoder.mask_tokens.weight",)
    assert float(exact["sam.mask_decoder.mask_tokens.weight"].norm()) > 1e-4
    assert_same_clipped_sum(fast, exact, model.trainable_names)


def _rel_pos_by_matmul(attn, q, rel_pos_h, rel_pos_w, q_size, k_size):
    """SAM's add_decomposed_rel_pos with its two einsums written as matmuls (same values)."""
    encoder = import_sam_modeling().image_encoder
    rh, rw = encoder.get_rel_pos(q_size[0], k_size[0], rel_pos_h), encoder.get_rel_pos(q_size[1], k_size[1], rel_pos_w)
    r_q = q.reshape(q.shape[0], *q_size, q.shape[-1])
    rel_h = r_q @ rh.transpose(1, 2)[None]  # [B, H, W, kh]
    rel_w = (r_q.transpose(1, 2) @ rw.transpose(1, 2)[None]).transpose(1, 2)  # [B, H, W, kw]
    logits = attn.view(q.shape[0], *q_size, *k_size) + rel_h[..., None] + rel_w[..., None, :]
    return logits.view(q.shape[0], q_size[0] * q_size[1], k_size[0] * k_size[1])


def test_rel_pos_tables_no_tap_sees_fall_back_to_the_exact_route(monkeypatch):
    """Should SAM's attention stop making rel_h / rel_w by the einsums the rule taps, the tables are used
    in the graph but seen by no tap: the route check must send them to the exact route, not report zeros."""
    monkeypatch.setattr(import_sam_modeling().image_encoder, "add_decomposed_rel_pos", _rel_pos_by_matmul)
    model = perturbed_model("fedsam", prompt="box")
    inputs = _inputs(model, 3)
    units = Units.singletons(3)
    clipper = FastClipper(model)
    fast, _, _ = clipper(*inputs, units, max_grad_norm=1e9)
    exact, _ = exact_clipped_sum(model, *inputs, units, max_grad_norm=1e9)
    tables = tuple(name for name in model.trainable_names if ".rel_pos_" in name)
    assert tables and clipper.route.exact == tables
    assert_same_clipped_sum(fast, exact, list(tables))
    assert_same_clipped_sum(fast, exact, model.trainable_names)


def test_no_mode_stays_entered_when_the_forward_raises(monkeypatch):
    def broken(*args):
        raise RuntimeError("inside the attention")

    model = perturbed_model("fedsam", prompt="box")
    inputs = _inputs(model, 2)
    monkeypatch.setattr(import_sam_modeling().image_encoder, "add_decomposed_rel_pos", broken)
    with pytest.raises(RuntimeError, match="inside the attention"):
        FastClipper(model)(*inputs, Units.singletons(2), max_grad_norm=1.0)
    assert torch._C._len_torch_function_stack() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_unit_larger_than_a_chunk_is_summed_then_clipped():
    model = perturbed_model("samed", prompt="none")
    inputs = _inputs(model, 3)
    clipper = FastClipper(model)
    whole, _, _ = clipper(*inputs, Units.of_labels([0, 0, 0]), max_grad_norm=0.05)
    chunked, losses = clipper.large_unit(*inputs, chunk=2, max_grad_norm=0.05)
    assert losses.shape == (3,)
    assert_same_clipped_sum(chunked, whole, model.trainable_names)


@pytest.mark.parametrize("method", ["fedmsa", "fedsam"])
def test_hooks_are_gone_after_a_call(method):
    model = perturbed_model(method, prompt="box")
    inputs = _inputs(model, 2)
    FastClipper(model)(*inputs, Units.singletons(2), max_grad_norm=1.0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0
