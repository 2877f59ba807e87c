"""`--compare-centralized`: the centralized baseline on the union of the training sites, same budget.

Budget: as many passes over the union as a site makes over its own data in the whole federated run
(rounds x local epochs), by the run's recipe (its optimizer kept across epochs, one lr schedule over
the run) with the run's learning rate, batch size and seed. Every site (held-out included) is
evaluated on its validation split as in the federated run (`validate`: no prompt, per class and case).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedmed.data import SiteData
from fedmed.fl.plan import RunPlan
from fedmed.io import load_trainable
from fedmed.models import build_model, load_trainable_state
from fedmed.train.centralized import evaluate_sites, mean_over_sites, train_centralized


def centralized_baseline(plan: RunPlan, sites: list[SiteData], out: str | Path, *, device: str = "auto",
                         on_step=None) -> dict:
    """Train on the union of the non-held-out sites; returns {"dice", "sites", "epochs", ...}.

    "dice" averages the training sites as the federated run's `mean_dice` does; "holdout_dice" apart.
    """
    out = Path(out)
    training = [site for site in sites if site.name != plan.holdout]
    config = plan.model.build_config(num_classes=sites[0].num_classes, seed=plan.federation.seed,
                                     checkpoint=plan.checkpoint)
    train_config = replace(plan.training.train_config(recipe=plan.model.recipe, seed=plan.federation.seed,
                                                      device=device),
                           epochs=plan.rounds * plan.training.local_epochs)
    metrics = train_centralized(training, config, train_config, out, on_step=on_step)
    per_site = metrics["final"]["sites"]
    result = {"epochs": train_config.epochs, "train_sites": [s.name for s in training], "wall_s": metrics["wall_s"],
              "out": str(out)}
    if plan.holdout is not None:
        model = build_model(config)
        load_trainable_state(model, load_trainable(out / "trainable.pt")[0])
        per_site = evaluate_sites(model, sites, train_config)["sites"]
        result["holdout_dice"] = per_site[plan.holdout]["dice"]
    trained = {name: m for name, m in per_site.items() if name != plan.holdout}
    return {"dice": mean_over_sites(trained, "dice"), "sites": per_site, **result}
