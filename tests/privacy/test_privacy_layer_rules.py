"""Each layer rule against autograd on one example at a time: per-unit gradients, norms, clipped sums.

Rows are folded as SAM folds them (m rows per example, example-major), units group examples as a
patient does, and layer sizes are picked to exercise both the ghost and the per-unit route.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedmed.models.lora import add_lora, add_lora_qkv
from fedmed.models.sam_import import import_sam_modeling
from fedmed.privacy.ghost import Ghost, PerUnit
from fedmed.privacy.layer_rules import (
    ConvRule,
    ConvTransposeRule,
    EmbeddingRule,
    ExactLayer,
    LayerNorm2dRule,
    LayerNormRule,
    LinearRule,
    LoRARule,
    RelPosRule,
    rule_for,
)
from fedmed.privacy.units import Units

BATCH, ROWS = 3, 2  # examples, rows per example (windows)


class Gated(nn.Module):
    """A layer with a tensor no typed rule knows: y = x * sigmoid(gate) (+ a linear sub-layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(5))
        self.inner = nn.Linear(5, 5)

    def forward(self, x):
        return self.inner(x) * torch.sigmoid(self.gate)


def _lora(kind: str) -> nn.Module:
    layer = nn.Linear(6, 9)
    layer.requires_grad_(False)
    layer = add_lora(layer, rank=2, alpha=4.0) if kind == "lora" else add_lora_qkv(layer, rank=2, alpha=4.0)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if "lora" in name:
                param.normal_()
    return layer


def _attention(table_side: int) -> nn.Module:
    """SAM's encoder attention on 3 x 3 tokens, only its relative-position tables training."""
    layer = import_sam_modeling().image_encoder.Attention(8, num_heads=2, use_rel_pos=True,
                                                          input_size=(table_side, table_side))
    layer.requires_grad_(False)
    with torch.no_grad():
        for table in (layer.rel_pos_h, layer.rel_pos_w):
            table.normal_().requires_grad_(True)
    return layer


def _case(name: str):
    """(layer, inputs [R, ...], expected rule type)."""
    g = torch.Generator().manual_seed(0)
    if name == "linear-ghost":  # L = 2 rows x 1 token (x 2 examples in a patient): L (d + p) = 68 < d p = 72
        return nn.Linear(8, 9), (torch.randn(BATCH * ROWS, 1, 8, generator=g),), LinearRule
    if name == "linear-per-unit":  # L = 2 x 10 tokens: L (d + p) = 140 > d p = 12
        return nn.Linear(3, 4), (torch.randn(BATCH * ROWS, 10, 3, generator=g),), LinearRule
    if name in ("lora", "lora-qkv"):
        return _lora(name), (torch.randn(BATCH * ROWS, 4, 6, generator=g),), LoRARule
    if name == "conv":
        return nn.Conv2d(2, 3, 3, padding=1), (torch.randn(BATCH * ROWS, 2, 5, 5, generator=g),), ConvRule
    if name == "conv-transpose":
        layer = nn.ConvTranspose2d(3, 2, 2, stride=2)
        return layer, (torch.randn(BATCH * ROWS, 3, 3, 3, generator=g),), ConvTransposeRule
    if name == "embedding":
        return nn.Embedding(5, 3), (torch.randint(0, 5, (BATCH * ROWS, 4), generator=g),), EmbeddingRule
    if name == "layer-norm":
        return nn.LayerNorm(4), (torch.randn(BATCH * ROWS, 3, 4, generator=g),), LayerNormRule
    if name == "layer-norm-2d":
        layer = import_sam_modeling().common.LayerNorm2d(3)
        return layer, (torch.randn(BATCH * ROWS, 3, 2, 2, generator=g),), LayerNorm2dRule
    if name == "rel-pos":
        return _attention(3), (torch.randn(BATCH * ROWS, 3, 3, 8, generator=g),), RelPosRule
    if name == "rel-pos-interpolated":  # tables for 2 x 2 tokens, used on 3 x 3: SAM interpolates them
        return _attention(2), (torch.randn(BATCH * ROWS, 3, 3, 8, generator=g),), RelPosRule
    if name == "exact-layer":
        return Gated(), (torch.randn(BATCH * ROWS, 4, 5, generator=g),), ExactLayer
    raise KeyError(name)


NAMES = ["linear-ghost", "linear-per-unit", "lora", "lora-qkv", "conv", "conv-transpose", "embedding", "layer-norm",
         "layer-norm-2d", "rel-pos", "rel-pos-interpolated", "exact-layer"]


def _reference(layer, own: dict[str, nn.Parameter], inputs, grad, labels) -> dict[str, torch.Tensor]:
    """Per-unit gradients by autograd, one example at a time."""
    per_example = []
    for b in range(BATCH):
        part = slice(b * ROWS, (b + 1) * ROWS)
        out = layer(*(x[part] for x in inputs))
        grads = torch.autograd.grad((out * grad[part]).sum(), list(own.values()))
        per_example.append(dict(zip(own, grads)))
    units = Units.of_labels(labels)
    return {name: units.sum(torch.stack([g[name] for g in per_example])) for name in own}


def _contributions(rule, layer, inputs, grad, units) -> dict:
    """As the clipper gets them: from taps inside the layer's forward if the rule has them, else from the
    layer's inputs and output gradient."""
    inputs = tuple(x.detach() for x in inputs)
    collected = {}

    def tap(names, tensor, on_grad):
        tensor.register_hook(lambda g: collected.update(on_grad(g)))
        return tensor

    mode = rule.taps_inside(inputs, units, tap)
    if mode is None:
        return rule(inputs, grad, units)
    with mode:
        out = layer(*inputs)
    own = [p for p in layer.parameters(recurse=False) if p.requires_grad]
    torch.autograd.grad((out * grad).sum(), own)
    return collected


@pytest.mark.parametrize("labels", [[0, 1, 2], [5, 5, 8]], ids=["images", "patients"])
def test_rel_pos_tables_are_tapped_inside_unless_interpolated(labels):
    units = Units.of_labels(labels)
    for name, inside in (("rel-pos", True), ("rel-pos-interpolated", False)):
        layer, inputs, _ = _case(name)
        mode = rule_for(layer, ["rel_pos_h", "rel_pos_w"]).taps_inside(inputs, units, lambda n, t, f: t)
        assert (mode is not None) is inside, name


@pytest.mark.parametrize("labels", [[0, 1, 2], [5, 5, 8]], ids=["images", "patients"])
@pytest.mark.parametrize("name", NAMES)
def test_rule_equals_autograd_per_example(name, labels):
    layer, inputs, kind = _case(name)
    own = {n: p for n, p in layer.named_parameters(recurse=False) if p.requires_grad}
    rule = rule_for(layer, list(own))
    assert type(rule) is kind
    grad = torch.randn(layer(*inputs).shape, generator=torch.Generator().manual_seed(1))
    units = Units.of_labels(labels)
    contributions = _contributions(rule, layer, inputs, grad, units)
    expected = _reference(layer, own, inputs, grad, labels)
    factors = torch.tensor([0.3, 1.0, 0.7])[: units.count]
    assert set(contributions) == set(own)
    for tensor_name, part in contributions.items():
        ref = expected[tensor_name]
        torch.testing.assert_close(part.per_unit(), ref, atol=1e-5, rtol=1e-4, msg=tensor_name)
        torch.testing.assert_close(part.norm2.float(), ref.flatten(1).pow(2).sum(1), atol=1e-5, rtol=1e-4,
                                   msg=tensor_name)
        torch.testing.assert_close(part.weighted(factors), torch.einsum("u,u...->...", factors, ref), atol=1e-5,
                                   rtol=1e-4, msg=tensor_name)


@pytest.mark.parametrize("labels", [[0, 1, 2], [5, 5, 8]], ids=["images", "patients"])
def test_the_route_follows_the_cost_rule(labels):
    for name, route in (("linear-ghost", Ghost), ("linear-per-unit", PerUnit)):
        layer, inputs, _ = _case(name)
        grad = torch.ones(layer(*inputs).shape)
        contributions = LinearRule(layer, ["weight", "bias"])(inputs, grad, Units.of_labels(labels))
        assert type(contributions["weight"]) is route and type(contributions["bias"]) is PerUnit


def test_unusual_layers_get_the_exact_layer_rule():
    assert type(rule_for(nn.Conv2d(4, 4, 3, groups=2), ["weight"])) is ExactLayer
    assert type(rule_for(nn.ConvTranspose2d(2, 2, 3, stride=2), ["weight"])) is ExactLayer
    assert type(rule_for(nn.Embedding(4, 2, padding_idx=0), ["weight"])) is ExactLayer


def test_rows_that_are_not_whole_examples_are_refused():
    layer, inputs, _ = _case("linear-ghost")
    with pytest.raises(ValueError, match="rows must be whole examples"):
        LinearRule(layer, ["weight"])(inputs, torch.ones(layer(*inputs).shape), Units.singletons(4))
