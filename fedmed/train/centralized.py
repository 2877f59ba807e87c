"""The centralized baseline: train one model on the union of the sites' training data.

Writes `out/metrics.json` (per-epoch and final validation metrics per site; the final mean Dice at
`final.dice`) and `out/trainable.pt` (the trainable tensors only). Validation is the one every round
of a federation runs (`fedmed.train.evaluate.validate`: per class, per case, no prompt), and the mean
over sites is weighted by their cases as the federated `mean_dice` is, so the two compare like for like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from torch.utils.data import ConcatDataset

from fedmed.data.types import SiteData
from fedmed.io import save_trainable, write_json
from fedmed.models import ModelConfig, build_model, trainable_state
from fedmed.recipes import get_recipe
from fedmed.train.evaluate import validate
from fedmed.train.loop import TrainConfig, resolve_device, train_local
from fedmed.train.schedule import planned_total_steps


def mean_over_sites(per_site: dict[str, dict], key: str) -> float:
    """Mean of metric `key` over sites, weighted by their validation cases, skipping NaN."""
    pairs = [(m[key], m["cases"]) for m in per_site.values() if not math.isnan(m[key])]
    total = sum(weight for _, weight in pairs)
    return sum(value * weight for value, weight in pairs) / total if total else math.nan


def evaluate_sites(model, sites: list[SiteData], config: TrainConfig) -> dict:
    """Each site's validation as a federation's round runs it ({"dice", "per_class", "loss", "cases",
    "samples", "prompt", "unit"}) and the case-weighted mean Dice over the sites."""
    device = resolve_device(config.device)
    per_site = {site.name: validate(model, site.val, class_names=site.class_names, prompt="none",
                                    batch_size=config.batch_size, device=device).model_dump(exclude={"per_case"})
                for site in sites}
    return {"dice": mean_over_sites(per_site, "dice"), "sites": per_site}


def train_centralized(
    sites: list[SiteData],
    model_config: ModelConfig,
    train_config: TrainConfig,
    out: str | Path,
    *,
    on_epoch: Callable[[int, dict], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train on all sites' training data for `train_config.epochs`, evaluating after each epoch.

    One optimizer (its state carried from epoch to epoch) and one lr schedule over the whole run.
    """
    out = Path(out)
    started = time.perf_counter()
    model = build_model(model_config)
    union = ConcatDataset([site.train for site in sites])
    total_steps = train_config.total_steps or planned_total_steps(
        get_recipe(train_config.recipe).schedule, num_samples=len(union), batch_size=train_config.batch_size,
        epochs=train_config.epochs)
    state, epochs = None, []
    for epoch in range(1, train_config.epochs + 1):
        epoch_config = replace(train_config, epochs=1, seed=train_config.seed + epoch, total_steps=total_steps)
        result = train_local(model, union, epoch_config, optimizer_state=state, on_step=on_step)
        state = result.optimizer_state
        record = {"epoch": epoch, "train_loss": result.loss, "val": evaluate_sites(model, sites, train_config)}
        epochs.append(record)
        if on_epoch:
            on_epoch(epoch, record)
    metrics = {
        "job": "centralized",
        "model": asdict(model_config),
        "train": asdict(train_config),
        "sites": [site.name for site in sites],
        "train_samples": len(union),
        "epochs": epochs,
        "final": epochs[-1]["val"] if epochs else evaluate_sites(model, sites, train_config),
        "wall_s": time.perf_counter() - started,
    }
    save_trainable(out / "trainable.pt", trainable_state(model), model=asdict(model_config), epochs=train_config.epochs)
    write_json(out / "metrics.json", metrics)
    return metrics
