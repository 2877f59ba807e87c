"""Model cards for run directories made before runs wrote them: the model from the run's own files,
the class names and normalisation from the data it trained on.

    card_for_run("runs/fedmsa-tiny", "synthetic")    # writes runs/fedmsa-tiny/model_card.json

A federation's run directory holds `config.json` (the run plan: model spec, seed, starting weights;
read in the layout before and after the federation config became sections) and `final.pt`;
`fedmed train` writes `trainable.pt`, whose metadata holds the model config.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedmed.data.sites import load_sites
from fedmed.inference.card import ModelCard, normalisation_of, read_model_card, write_model_card
from fedmed.io import TrainableCheckpointError, load_trainable
from fedmed.models import ModelConfig, arch_spec

_SPEC_FIELDS = ("arch", "method", "image_size", "checkpoint", "lora_rank", "lora_alpha", "adapter_ratio")


class LegacyRunError(ValueError):
    """A run directory whose model cannot be told from its files."""


def _run_model(run_dir: Path) -> tuple[dict, str, str | None]:
    """(model config fields without num_classes, tensor file name, base checkpoint SHA-256 if recorded)."""
    plan_path, trained = run_dir / "config.json", run_dir / "trainable.pt"
    if plan_path.is_file() and (run_dir / "final.pt").is_file():
        try:  # both plan layouts: {"seed", "model": {..., "checkpoint"}} and {"federation": {"seed"}, "checkpoint"}
            plan = json.loads(plan_path.read_text())
            spec = {**plan["model"], "checkpoint": plan.get("checkpoint") or plan["model"].get("checkpoint")}
            seed = (plan.get("federation") or {}).get("seed", plan.get("seed", 0))
            fields = {k: spec[k] for k in _SPEC_FIELDS if spec.get(k) is not None} | {"seed": int(seed)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise LegacyRunError(f"{plan_path}: not a run plan ({error})") from None
        return fields, "final.pt", spec.get("checkpoint_sha256")
    if trained.is_file():
        try:
            meta = load_trainable(trained)[1]
            fields = {k: v for k, v in meta["model"].items() if k in (*_SPEC_FIELDS, "seed")}
        except (TrainableCheckpointError, KeyError, TypeError) as error:
            raise LegacyRunError(f"{trained}: no model config in its metadata ({error})") from None
        return fields, "trainable.pt", None
    raise LegacyRunError(f"{run_dir}: neither config.json + final.pt (a federation) nor trainable.pt (fedmed train)")


def card_for_run(run_dir: str | Path, data: str | Path, **data_options) -> ModelCard:
    """Write `run_dir/model_card.json` from the run's files and the first site of `data` (as `load_sites`
    reads it, with `data_options`); returns the card. The base checkpoint must still be where it was."""
    run_dir = Path(run_dir)
    fields, tensors, sha256 = _run_model(run_dir)
    image_size = fields.get("image_size") or arch_spec(fields["arch"]).image_size
    site = load_sites(data, image_size=image_size, seed=fields["seed"], **data_options)[0]
    if fields.get("checkpoint") and sha256 is None and not Path(fields["checkpoint"]).is_file():
        raise LegacyRunError(f"{run_dir}: the run started from {fields['checkpoint']}, which is no longer there")
    config = ModelConfig(**fields, num_classes=site.num_classes)
    path = write_model_card(run_dir, config, class_names=site.class_names, normalisation=normalisation_of(site),
                            tensors=tensors, checkpoint_sha256=sha256)
    return read_model_card(path)
