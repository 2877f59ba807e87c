"""The recipe's optimizer over the trainable tensors, and its state kept from one round to the next.

FLAP-SAM and FedFMS keep each client's optimizer (Adam moments, step counts) and schedule step
across rounds; fedmed's default recipe makes a new one every round. The state leaves `train_local`
as a plain dict of CPU tensors and numbers (`torch.save`-able, `weights_only`-loadable), which a
site keeps in its private state directory and hands back next round:

    previous = load_state(path) if path.exists() else None
    result = train_local(model, data, config, optimizer_state=previous)
    save_state(path, result.optimizer_state)   # atomic: a crash keeps the previous file whole

The state names the recipe, the optimizer and the trainable tensors it belongs to; restoring it into
another model or recipe raises `OptimizerStateError` naming the difference. The config's
hyper-parameters (lr, weight decay, betas) win over the saved ones, so the server's lr applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedmed.io import save_record
from fedmed.recipes import get_recipe

STATE_FORMAT = "fedmed-optimizer-v1"

_OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


class OptimizerStateError(ValueError):
    """A saved optimizer state that does not belong to this model, recipe or optimizer."""


def make_optimizer(model: torch.nn.Module, config: Any) -> torch.optim.Optimizer:
    """The recipe's optimizer (`config.recipe`) over the model's trainable tensors at `config.lr`."""
    spec = get_recipe(config.recipe).optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    return _OPTIMIZERS[spec.kind](params, lr=config.lr, betas=spec.betas, weight_decay=config.weight_decay)


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(item) for item in value)
    return value


def export_state(optimizer: torch.optim.Optimizer, *, names: list[str], recipe: str, step: int) -> dict:
    """A detached CPU copy of `optimizer`'s state with the global schedule `step` it has reached.

    `names` are the trainable tensors in the optimizer's parameter order (`model.trainable_names`).
    """
    return {
        "format": STATE_FORMAT,
        "recipe": recipe,
        "optimizer": get_recipe(recipe).optimizer.kind,
        "names": list(names),
        "step": int(step),
        "state": _cpu_copy(optimizer.state_dict()),
    }


def restore_state(optimizer: torch.optim.Optimizer, state: dict, *, names: list[str], config: Any) -> int:
    """Load a state from `export_state` into `optimizer` (built by `make_optimizer` for `config`).

    Returns the global step to continue the schedule from. The config's lr, weight decay and betas
    replace the saved ones.
    """
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise OptimizerStateError(f"not a fedmed optimizer state (format {STATE_FORMAT!r} expected)")
    expected = {"recipe": config.recipe, "optimizer": get_recipe(config.recipe).optimizer.kind}
    problems = [f"{key}: saved {state.get(key)!r}, now {value!r}"
                for key, value in expected.items() if state.get(key) != value]
    problems += _name_problems(state.get("names"), list(names))
    if not problems:
        problems += _shape_problems(optimizer, state.get("state"), list(names))
    step = state.get("step")
    if not isinstance(step, int) or step < 0:
        problems.append(f"step: {step!r} is not a count of steps")
    if problems:
        raise OptimizerStateError("the saved optimizer state does not fit: " + "; ".join(problems))
    try:
        optimizer.load_state_dict(state["state"])
    except (ValueError, KeyError, TypeError) as error:
        raise OptimizerStateError(f"the saved optimizer state does not load: {error}") from None
    spec = get_recipe(config.recipe).optimizer
    for group in optimizer.param_groups:
        group.update(lr=config.lr, weight_decay=config.weight_decay, betas=spec.betas)
    return step


def _name_problems(saved: Any, now: list[str]) -> list[str]:
    """How the saved trainable tensors differ from the model's: count, then the first differing name."""
    if not isinstance(saved, list):
        return ["names: the saved state lists no trainable tensors"]
    if saved == now:
        return []
    if len(saved) != len(now):
        return [f"names: saved for {len(saved)} trainable tensors, the model has {len(now)}"]
    index = next(i for i, (a, b) in enumerate(zip(saved, now)) if a != b)
    return [f"names: tensor {index} is {saved[index]!r} in the saved state, {now[index]!r} in the model"]


def _shape_problems(optimizer: torch.optim.Optimizer, saved: Any, names: list[str]) -> list[str]:
    """Saved moments whose shape is not their tensor's (same names, other sizes: e.g. another LoRA rank)."""
    per_param = saved.get("state") if isinstance(saved, dict) else None
    if not isinstance(per_param, dict):
        return ["state: no per-tensor optimizer state"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    problems = []
    for index, (name, param) in enumerate(zip(names, params)):
        for key, value in per_param.get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                problems.append(f"{name}: saved {key} is {tuple(value.shape)}, the tensor is {tuple(param.shape)}")
    return problems


def save_state(path: str | Path, state: dict) -> Path:
    """Write a state from `export_state` to `path` atomically (a crash leaves the old file whole)."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise OptimizerStateError(f"{path}: refusing to write something that is not a fedmed optimizer state")
    return save_record(path, state)


def load_state(path: str | Path) -> dict:
    """Read a state written by `save_state` (tensors only, no code: `weights_only`), naming the file if
    it is unreadable or not an optimizer state. Whether it fits the model is `restore_state`'s check."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise OptimizerStateError(f"{path}: unreadable optimizer state ({error})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise OptimizerStateError(f"{path}: not a fedmed optimizer state (format {STATE_FORMAT!r} expected)")
    return state
