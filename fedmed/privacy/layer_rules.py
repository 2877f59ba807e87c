"""Per-layer rules: a layer's trainable tensors' per-unit gradients from its inputs and output gradient.

A forward hook keeps what a layer was called with, a tap on its output receives the output's
gradient during the one backward pass, and the layer's rule turns both into one `Contribution`
per trainable tensor the layer owns directly (`ghost.py`). A rule may instead tap tensors made
inside the layer's forward (`Rule.taps_inside`; the relative-position tables do). Rows of every
input are whole examples, example-major (SAM's windows and per-class decoder queries are), so
[R, ...] regroups as [B, L, ...].

| layer | rule |
| --- | --- |
| `nn.Linear` | weight: ghost or per-unit (`linear_contribution`); bias: per-unit |
| `LoRALinear`, `LoRAQKV` | each factor is a linear map: B sees x A^T, A sees the gradient g B |
| `nn.Conv2d` (groups 1) | Opacus's `unfold2d` turns it into a linear map over patches |
| `nn.ConvTranspose2d` (stride = kernel) | a linear map per input pixel to a k x k output block |
| `nn.Embedding` | Opacus's embedding ghost norm; clipped sum by `index_add` |
| `nn.LayerNorm` | Opacus's per-sample grad sampler, summed per unit |
| SAM's `LayerNorm2d` | the same over the channel dimension |
| SAM's encoder `Attention` (rel-pos tables) | rel_h / rel_w tapped inside the layer; their gradient, summed per table row |
| anything else | `ExactLayer`: vjp of that layer alone per example, under vmap |

Exact type checks (no subclasses): a subclass may compute something else with the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from opacus.grad_sample.embedding import compute_embedding_grad_sample
from opacus.grad_sample.embedding_norm_sample import compute_embedding_norm_sample
from opacus.grad_sample.layer_norm import compute_layer_norm_grad_sample
from opacus.utils.tensor_utils import unfold2d
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from fedmed.models.lora import LoRALinear, LoRAQKV
from fedmed.models.sam_import import import_sam_modeling
from fedmed.privacy.ghost import Contribution, PerUnit, bias_contribution, linear_contribution, rows
from fedmed.privacy.units import Units

_sam = import_sam_modeling()
_LayerNorm2d = _sam.common.LayerNorm2d
_SamAttention = _sam.image_encoder.Attention

Contributions = dict[str, Contribution]
# tap(names, tensor, on_grad): `tensor` again, and on_grad(its gradient) -> contributions of `names`
Tap = Callable[[list[str], torch.Tensor, Callable[[torch.Tensor], Contributions]], torch.Tensor]


class Rule:
    """Turns (inputs, output gradient) of one call of `module` into contributions of `names` (its own tensors)."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        self.module, self.names = module, names

    def tensor(self, name: str) -> torch.Tensor:
        return getattr(self.module, name).detach()

    def __call__(self, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor, units: Units) -> Contributions:
        raise NotImplementedError

    def taps_inside(self, inputs: tuple[torch.Tensor, ...], units: Units, tap: Tap) -> TorchFunctionMode | None:
        """A mode to enter around this call of the layer that taps tensors made inside it, with
        `tap(names, tensor, grad -> contributions)`, instead of the output tap (None: the output tap)."""
        return None


class LinearRule(Rule):
    def __call__(self, inputs, grad, units):
        a, g = rows(inputs[0], units.batch), rows(grad, units.batch)
        out = {}
        if "weight" in self.names:
            out["weight"] = linear_contribution(a, g, units, self.module.weight.shape)
        if "bias" in self.names:
            out["bias"] = bias_contribution(g, units, self.module.bias.shape)
        return out


class LoRARule(LinearRule):
    """LoRALinear / LoRAQKV: out = x W^T + b + scale * (x A^T) B^T on the q and v thirds (LoRAQKV) or all of it."""

    def __call__(self, inputs, grad, units):
        out = super().__call__(inputs, grad, units)
        a, g = rows(inputs[0], units.batch), rows(grad, units.batch)
        scale = self.module.lora_scale
        if isinstance(self.module, LoRAQKV):
            dim = self.module.out_features // 3
            pairs = [("lora_q_a", "lora_q_b", g[..., :dim]), ("lora_v_a", "lora_v_b", g[..., 2 * dim:])]
        else:
            pairs = [("lora_a", "lora_b", g)]
        for name_a, name_b, part in pairs:
            lora_a, lora_b = self.tensor(name_a).float(), self.tensor(name_b).float()
            if name_b in self.names:
                out[name_b] = linear_contribution(F.linear(a, lora_a) * scale, part, units, lora_b.shape)
            if name_a in self.names:
                out[name_a] = linear_contribution(a, (part @ lora_b) * scale, units, lora_a.shape)
        return out


class ConvRule(Rule):
    def __call__(self, inputs, grad, units):
        conv = self.module
        cols = unfold2d(inputs[0], kernel_size=conv.kernel_size, padding=conv.padding, stride=conv.stride,
                        dilation=conv.dilation)
        a = rows(cols.transpose(1, 2), units.batch)
        g = rows(grad.flatten(2).transpose(1, 2), units.batch)
        out = {}
        if "weight" in self.names:
            out["weight"] = linear_contribution(a, g, units, conv.weight.shape)
        if "bias" in self.names:
            out["bias"] = bias_contribution(g, units, conv.bias.shape)
        return out


class ConvTransposeRule(Rule):
    """stride = kernel, no padding: out[:, :, i*k + di, j*k + dj] = x[:, :, i, j] @ W[:, :, di, dj] + b."""

    def __call__(self, inputs, grad, units):
        x = inputs[0]
        (kh, kw), (h, w) = self.module.kernel_size, x.shape[-2:]
        blocks = grad.reshape(grad.shape[0], grad.shape[1], h, kh, w, kw).permute(0, 2, 4, 1, 3, 5)
        a = rows(x.flatten(2).transpose(1, 2), units.batch)
        out = {}
        if "weight" in self.names:
            g = rows(blocks.reshape(grad.shape[0], h * w, -1), units.batch)
            out["weight"] = linear_contribution(a, g, units, self.module.weight.shape, transposed=True)
        if "bias" in self.names:
            out["bias"] = bias_contribution(rows(grad.flatten(2).transpose(1, 2), units.batch), units,
                                            self.module.bias.shape)
        return out


class EmbeddingRule(Rule):
    def __call__(self, inputs, grad, units):
        ids = inputs[0].reshape(units.batch, -1)
        g = grad.reshape(units.batch, -1, grad.shape[-1]).float()
        return {"weight": _EmbeddingContribution(self.module, ids, g, units)}


class _EmbeddingContribution(Contribution):
    def __init__(self, layer: nn.Embedding, ids: torch.Tensor, g: torch.Tensor, units: Units) -> None:
        self.layer, self.ids, self.g, self.units = layer, ids, g, units
        norms = compute_embedding_norm_sample(layer, [units.group(ids)], units.group(g))[layer.weight]
        self.norm2 = norms.double().pow(2)

    def weighted(self, factors):
        weights = self.units.expand(factors.to(self.g.dtype))
        out = self.g.new_zeros(self.layer.weight.shape)
        scaled = (self.g * weights[:, None, None]).reshape(-1, self.g.shape[-1])
        return out.index_add_(0, self.ids.reshape(-1), scaled)

    def per_unit(self):
        per_example = compute_embedding_grad_sample(self.layer, [self.ids], self.g)[self.layer.weight]
        return self.units.sum(per_example)


class LayerNormRule(Rule):
    def __call__(self, inputs, grad, units):
        dims = len(self.module.normalized_shape)
        x = inputs[0].reshape(units.batch, -1, *inputs[0].shape[-dims:]).float()
        g = grad.reshape(x.shape).float()
        grads = compute_layer_norm_grad_sample(self.module, [x], g)
        params = dict(self.module.named_parameters(recurse=False))
        return {name: PerUnit(units.sum(grads[params[name]])) for name in self.names}


class LayerNorm2dRule(Rule):
    """SAM's LayerNorm2d: x [R, C, H, W] normalised over C, then weight * x_hat + bias per channel."""

    def __call__(self, inputs, grad, units):
        x, g = inputs[0].float(), grad.float()
        mean = x.mean(1, keepdim=True)
        x_hat = (x - mean) / torch.sqrt((x - mean).pow(2).mean(1, keepdim=True) + self.module.eps)
        per_row = {"weight": (g * x_hat).sum((2, 3)), "bias": g.sum((2, 3))}
        return {name: PerUnit(units.sum(rows(per_row[name], units.batch).sum(1))) for name in self.names}


class ExactLayer(Rule):
    """Any other layer (and SAM's relative-position tables where SAM interpolates them): for each example, the
    vjp of the layer alone on that example's rows, under vmap. Exact; costs one more forward and
    backward of this layer. Its sub-layers' hooks must be off while it runs (the caller's job)."""

    def __call__(self, inputs, grad, units):
        tensors = {name: self.tensor(name) for name in self.names}
        per_example_rows = [x.reshape(units.batch, -1, *x.shape[1:]) for x in (*inputs, grad)]

        def one(*example):
            *args, out_grad = example
            _, pull = vjp(lambda t: functional_call(self.module, t, tuple(args)), tensors)
            return pull(out_grad)[0]

        grads = vmap(one)(*per_example_rows)
        return {name: PerUnit(units.sum(grads[name].float())) for name in self.names}


class RelPosRule(ExactLayer):
    """SAM's encoder Attention, relative-position tables (`fedsam`): logits = q k^T * scale + rel_h + rel_w
    with rel_h[b, h, w, k] = q[b, h, w] . Rh[h, k] and Rh = rel_pos_h[h - k + H - 1] (and so for w).

    The backward pass forms the gradient of rel_h [R*heads, H, W, H] (the logits' gradient summed over
    kw) on its way to q; `taps_inside` taps rel_h and rel_w where SAM's `add_decomposed_rel_pos` makes
    them (its two einsums, seen through a torch function mode entered only for this layer's forward in a
    DP pass), and the tap reduces that gradient at once: dRh[b, h, k] = sum_w q[b, h, w] dRel_h[b, h, w, k]
    per example, then each table row sums the (h, k) pairs that read it. Nothing is recomputed and
    nothing of size tokens x tokens is kept. Tables that SAM would interpolate (size != 2 * side - 1)
    take `ExactLayer` through the output tap, as any layer whose inside is not tapped."""

    def taps_inside(self, inputs, units, tap):
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return None
        height, width = x.shape[1:3]
        if self.module.rel_pos_h.shape[0] != 2 * height - 1 or self.module.rel_pos_w.shape[0] != 2 * width - 1:
            return None
        sides = {"rel_pos_h": height, "rel_pos_w": width}
        equations = {equation: name for equation, name in _REL_POS_EINSUMS.items() if name in self.names}
        return _RelPosTaps(equations, sides, partial(self._table_grad, units), tap)

    def _table_grad(self, units: Units, name: str, r_q: torch.Tensor, grad: torch.Tensor) -> Contributions:
        """r_q [R*heads, H, W, hd], grad of rel_h [R*heads, H, W, H] (rel_w: [..., W]) -> per-unit gradient."""
        side = grad.shape[-1]
        r_q = r_q.float().reshape(units.batch, -1, *r_q.shape[1:])
        grad = grad.float().reshape(units.batch, -1, *grad.shape[1:])
        pattern = "bmhwc,bmhwk->bhkc" if name == "rel_pos_h" else "bmhwc,bmhwk->bwkc"
        per_example = _gather_rows(torch.einsum(pattern, r_q, grad), side)  # [B, 2*side-1, hd]
        return {name: PerUnit(units.sum(per_example))}


# the einsums of SAM's add_decomposed_rel_pos that make rel_h and rel_w from r_q and Rh / Rw
_REL_POS_EINSUMS = {"bhwc,hkc->bhwk": "rel_pos_h", "bhwc,wkc->bhwk": "rel_pos_w"}


class _RelPosTaps(TorchFunctionMode):
    """Inside one Attention forward: taps the outputs of the einsums in `equations` (equation -> table name)
    whose table operand has the size the layer's input implies (`sides`: table name -> side)."""

    def __init__(self, equations: dict[str, str], sides: dict[str, int], table_grad, tap: Tap) -> None:
        super().__init__()
        self.equations, self.sides, self.table_grad, self.tap = equations, sides, table_grad, tap

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.einsum and len(args) == 3 and not kwargs and args[0] in self.equations:
            name, (r_q, table) = self.equations[args[0]], args[1:]
            side = self.sides[name]
            if table.shape[:2] == (side, side) and r_q.shape[-1] == table.shape[-1]:
                out = self.tap([name], out, partial(self.table_grad, name, r_q.detach()))
        return out


def _gather_rows(d_table: torch.Tensor, side: int) -> torch.Tensor:
    """[N, side, side, hd] gradients of R[i, j] = table[i - j + side - 1] -> [N, 2*side-1, hd]."""
    index = (torch.arange(side)[:, None] - torch.arange(side)[None, :] + side - 1).reshape(-1).to(d_table.device)
    out = d_table.new_zeros(d_table.shape[0], 2 * side - 1, d_table.shape[-1])
    return out.index_add_(1, index, d_table.reshape(d_table.shape[0], side * side, -1))


def rule_for(module: nn.Module, names: list[str]) -> Rule:
    """The rule for `module`'s own trainable tensors `names`."""
    kind = type(module)
    if kind is _SamAttention and set(names) <= set(_REL_POS_EINSUMS.values()):
        return RelPosRule(module, names)
    if kind in (LoRALinear, LoRAQKV):
        return LoRARule(module, names)
    if kind is nn.Linear:
        return LinearRule(module, names)
    if kind is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros":
        return ConvRule(module, names)
    if (kind is nn.ConvTranspose2d and module.stride == module.kernel_size and module.padding == (0, 0)
            and module.output_padding == (0, 0) and module.dilation == (1, 1) and module.groups == 1):
        return ConvTransposeRule(module, names)
    if kind is nn.Embedding and module.padding_idx is None and module.max_norm is None and not module.sparse:
        return EmbeddingRule(module, names)
    if kind is nn.LayerNorm and module.bias is not None:
        return LayerNormRule(module, names)
    if kind is _LayerNorm2d:
        return LayerNorm2dRule(module, names)
    return ExactLayer(module, names)
