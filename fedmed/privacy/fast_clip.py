"""Per-unit clipped gradient sums of a segmenter's trainable tensors, in one forward and one backward pass.

    clipper = FastClipper(model)
    sums, norms, losses = clipper(images, boxes, present, masks, units, max_grad_norm=C)
    # sums[name] = sum_u min(1, C / (||G_u|| + 1e-6)) * G_u  (Opacus's clip factor), norms = ||G_u|| [U],
    # losses [B] per example; G_u: the gradient of unit u's summed loss, over all trainable tensors

How (book-keeping ghost clipping, Bu et al. 2023): forward hooks keep each rule layer's inputs and
put a tap on its output; the single backward pass asks autograd only for the gradient reaching the
taps (`torch.autograd.grad(..., inputs=[anchor])`), so no parameter gradient is formed, and each
tap hands its output gradient to the layer's rule (`layer_rules.py`), which returns per-unit norms
and what the clipped sum needs (`ghost.py`); a rule that taps inside its layer instead (SAM's
relative-position tables) gets a mode entered around the layer's forward (`Rule.taps_inside`).
Tensors SAM uses outside a layer's forward get an entry tap (`sam_taps.py`). Once every unit's norm
is known, the clipped sum is formed per tensor.

Route, fixed on the first call by comparing with the autograd graph: a tensor whose uses in the
graph equal the uses its rule or tap saw takes this fast route; a tensor no one saw (or saw a
different number of times) takes the exact route (`PerSampleGradients`: whole-model vmap, for those
tensors only); a tensor the loss does not use gets zeros. For all four methods every trainable
tensor takes the fast route (a test checks), so the exact route's B copies of every trainable
tensor never exist; a layer's per-unit gradients are formed only where that is cheaper than its
ghost norm (LoRA factors, adapters in windowed blocks), and kept until every unit's norm is known.

From Opacus: the optimizer for pre-clipped sums (`DPOptimizerFastGradientClipping`: noise sigma*C,
division by the expected batch, step), Poisson sampling, the accountants, and the per-layer
helpers that fit (`unfold2d`, the LayerNorm grad sampler, the Embedding ghost norm). Written here,
because Opacus's `GradSampleModuleFastGradientClipping` + `DPLossFastGradientClipping` do not fit
SAM: their hooks take dim 0 of every layer input as the batch (SAM folds attention windows and
per-class decoder queries into it), they have no rule for LoRA factors, LayerNorm2d,
ConvTranspose2d, relative-position tables or tensors used outside a layer's forward, they always
take the ghost norm for sequences (for a LoRA factor in a windowed ViT-B block ~200x the per-unit
gradient), they know no units other than the example, and they run a second backward pass where
book-keeping needs none.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial

import torch
from monai.losses import DiceLoss

from fedmed.models.segmenter import SamSegmenter
from fedmed.privacy.ghost import Contribution, PerUnit
from fedmed.privacy.layer_rules import Rule, rule_for
from fedmed.privacy.per_sample import PerSampleGradients, dense_forward, per_example_loss
from fedmed.privacy.sam_taps import EntryTap, sam_entry_taps
from fedmed.privacy.units import Units
from fedmed.train.loss import one_hot_foreground


class _Tap(torch.autograd.Function):
    """Identity on `tensor` that hands the gradient arriving at it to `callback`; `anchor` makes it a target."""

    @staticmethod
    def forward(ctx, anchor, tensor, callback):
        ctx.callback = callback
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        ctx.callback(grad)
        return None, grad, None


@dataclass(frozen=True)
class Route:
    """Which trainable tensors take the fast route, the exact route, or have no gradient (names)."""

    fast: tuple[str, ...]
    exact: tuple[str, ...]
    unused: tuple[str, ...]


def graph_uses(root: torch.Tensor) -> Counter:
    """How many autograd edges lead from `root`'s graph into each leaf tensor, keyed by id(leaf)."""
    uses: Counter = Counter()
    seen, stack = set(), [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None and hasattr(child, "variable"):
                uses[id(child.variable)] += 1
            elif child is not None:
                stack.append(child)
    return uses


class _Pass:
    """One forward and backward pass: the hooks, the uses they saw, the contributions they collected."""

    def __init__(self, clipper: FastClipper, units: Units, device: torch.device) -> None:
        self.clipper, self.units = clipper, units
        self.anchor = torch.zeros((), requires_grad=True, device=device)
        self.uses: Counter = Counter()
        self.contributions: dict[str, list[Contribution]] = defaultdict(list)
        self.inside: dict[torch.nn.Module, contextlib.AbstractContextManager] = {}  # modes entered by `_enter`
        self.active = True

    @contextlib.contextmanager
    def hooks(self):
        handles = []
        for prefix, rule in self.clipper.rules:
            handles.append(rule.module.register_forward_pre_hook(partial(self._enter, prefix, rule)))
            handles.append(rule.module.register_forward_hook(partial(self._after, prefix, rule), with_kwargs=True))
        for (module, arg), taps in self.clipper.tap_groups.items():
            handles.append(module.register_forward_pre_hook(partial(self._before, arg, taps)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            while self.inside:  # a forward that raised left its modes entered
                self.inside.popitem()[1].__exit__(None, None, None)

    def _enter(self, prefix: str, rule: Rule, module, args):
        mode = rule.taps_inside(args, self.units, partial(self._inner_tap, prefix)) if self.active else None
        if mode is not None:
            mode.__enter__()
            self.inside[module] = mode

    def _inner_tap(self, prefix: str, names: list[str], tensor: torch.Tensor, on_grad) -> torch.Tensor:
        self.uses.update(prefix + name for name in names)
        return _Tap.apply(self.anchor, tensor, partial(self._layer_grad, prefix, on_grad))

    def _after(self, prefix: str, rule: Rule, module, args, kwargs, output):
        if module in self.inside:  # tapped inside: its taps counted the uses
            self.inside.pop(module).__exit__(None, None, None)
            return None
        tensors = all(isinstance(arg, torch.Tensor) for arg in args)
        if not self.active or kwargs or not args or not tensors or not isinstance(output, torch.Tensor):
            return None  # not seen: the route check sends these tensors to the exact route
        self.uses.update(prefix + name for name in rule.names)
        inputs = tuple(arg.detach() for arg in args)
        on_grad = partial(rule, inputs, units=self.units)
        return _Tap.apply(self.anchor, output, partial(self._layer_grad, prefix, on_grad))

    def _before(self, arg: int, taps: list[EntryTap], module, args):
        if not self.active or len(args) <= arg:
            return None
        used = [tap for tap in taps if tap.applies(args[arg])]
        if not used:
            return None
        self.uses.update(tap.name for tap in used)
        args = list(args)
        args[arg] = _Tap.apply(self.anchor, args[arg], partial(self._entry_grad, used))
        return tuple(args)

    def _keep(self, name: str, contribution: Contribution) -> None:
        if name in self.clipper.route.fast:
            self.contributions[name].append(contribution)

    def _layer_grad(self, prefix: str, on_grad, grad) -> None:
        self.active = False  # an exact-layer rule runs its layer again: its sub-layers' hooks stay quiet
        try:
            contributions = on_grad(grad)
        finally:
            self.active = True
        for name, contribution in contributions.items():
            self._keep(prefix + name, contribution)

    def _entry_grad(self, taps: list[EntryTap], grad) -> None:
        for tap in taps:
            per_row = tap.per_row(grad).float()
            per_example = per_row.reshape(self.units.batch, -1, *per_row.shape[1:]).sum(1)
            self._keep(tap.name, PerUnit(self.units.sum(per_example)))


class FastClipper:
    """Clipped per-unit gradient sums of `model.trainable_names` (see the module docstring)."""

    def __init__(self, model: SamSegmenter, *, mixed_precision: bool = False) -> None:
        self.model, self.mixed_precision = model, mixed_precision
        params = dict(model.named_parameters())
        self.names = list(model.trainable_names)
        self.params = {name: params[name] for name in self.names}
        taps = sam_entry_taps(model, set(self.names))
        self.tap_groups: dict[tuple, list[EntryTap]] = defaultdict(list)
        for tap in taps:
            self.tap_groups[(tap.module, tap.arg)].append(tap)
        tapped = {tap.name for tap in taps}
        self.rules: list[tuple[str, Rule]] = []
        for prefix, module in model.named_modules():
            prefix = prefix + "." if prefix else ""
            own = [name for name, _ in module.named_parameters(recurse=False)
                   if prefix + name in self.params and prefix + name not in tapped]
            if own:
                self.rules.append((prefix, rule_for(module, own)))
        self.dice = DiceLoss(sigmoid=True, reduction="none")
        self.route: Route | None = None
        self._exact: PerSampleGradients | None = None

    def _plan(self, losses: torch.Tensor, seen: Counter) -> Route:
        in_graph = graph_uses(losses)
        routes: dict[str, list[str]] = {"fast": [], "exact": [], "unused": []}
        for name, param in self.params.items():
            uses = in_graph[id(param)]
            kind = "unused" if uses == 0 else "fast" if uses == seen[name] else "exact"
            routes[kind].append(name)
        return Route(**{kind: tuple(names) for kind, names in routes.items()})

    def _autocast(self, device: torch.device):
        if self.mixed_precision and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor,
                 masks: torch.Tensor, units: Units, *, max_grad_norm: float
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(clipped sums by name, unit norms [U], per-example losses [B]) for a chunk of B >= 1 examples."""
        target = one_hot_foreground(masks, self.model.num_classes)
        run = _Pass(self, units, images.device)
        with run.hooks(), self._autocast(images.device):
            logits = dense_forward(self.model, images, boxes, present)
        losses = per_example_loss(self.dice, logits.float(), target)
        if self.route is None:
            self.route = self._plan(losses, run.uses)
        if self.route.fast:
            torch.autograd.grad(losses.sum(), [run.anchor], allow_unused=True)
        merged = {name: parts[0] if len(parts) == 1 else PerUnit(sum(part.per_unit() for part in parts))
                  for name, parts in run.contributions.items()}
        if self.route.exact:
            merged.update(self._exact_contributions(images, boxes, present, masks, units))
        norm2 = sum((part.norm2.to(losses.device) for part in merged.values()),
                    losses.new_zeros(units.count, dtype=torch.float64))
        norms = norm2.sqrt()
        factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0).float()
        sums = {}
        for name, param in self.params.items():
            part = merged.get(name)
            sums[name] = torch.zeros_like(param) if part is None else part.weighted(factors).to(param.dtype)
        return sums, norms.float(), losses.detach()

    def _exact_contributions(self, images, boxes, present, masks, units: Units) -> dict[str, Contribution]:
        if self._exact is None:
            self._exact = PerSampleGradients(self.model, names=self.route.exact, mixed_precision=self.mixed_precision)
        grads, _ = self._exact(images, boxes, present, masks)
        return {name: PerUnit(units.sum(grad.float())) for name, grad in grads.items()}

    def large_unit(self, images: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor,
                   masks: torch.Tensor, *, chunk: int, max_grad_norm: float
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(clipped gradient by name, per-example losses) of ONE unit too large for one pass: its plain
        gradient summed over passes of `chunk` examples, then clipped as a whole."""
        params = list(self.params.values())
        total = [torch.zeros_like(param) for param in params]
        losses = []
        for start in range(0, len(images), chunk):
            part = slice(start, start + chunk)
            with self._autocast(images.device):
                logits = dense_forward(self.model, images[part], boxes[part], present[part])
            loss = per_example_loss(self.dice, logits.float(), one_hot_foreground(masks[part], self.model.num_classes))
            for acc, grad in zip(total, torch.autograd.grad(loss.sum(), params, allow_unused=True)):
                if grad is not None:
                    acc += grad
            losses.append(loss.detach())
        norm = sum(acc.double().pow(2).sum() for acc in total).sqrt()
        factor = float((max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
        return {name: acc * factor for name, acc in zip(self.params, total)}, torch.cat(losses)
