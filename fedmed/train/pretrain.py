"""Pretraining the tiny SAM on a public synthetic corpus: the recipe of fedmed's built-in weights.

Every parameter (`fedsam`) is trained centrally, without privacy — the corpus is public — on
synthetic pictures from generator seed `PUBLIC_SEED`: other scanner profiles and other pictures
than any federation built from another seed (the default is 0). The result stands in for SAM's
own pretraining; the sites then fine-tune it on their private data.

    record = pretrain_tiny(Path("sam_tiny_public.pth"))   # also writes sam_tiny_public.json
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmed.data.synthetic import make_synthetic_sites
from fedmed.io import load_trainable, save_state_dict, write_json
from fedmed.models import ModelConfig, build_model, load_trainable_state
from fedmed.models.pretrained import file_sha256, record_path
from fedmed.train.centralized import evaluate_sites, train_centralized
from fedmed.train.loop import TrainConfig

PUBLIC_SEED = 1001


@dataclass(frozen=True)
class PretrainRecipe:
    """What the built-in tiny weights are trained on and how (lr: AdamW per step)."""

    seed: int = PUBLIC_SEED
    sites: int = 3
    samples_per_site: int = 128
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 8


def pretrain_tiny(out: Path, recipe: PretrainRecipe = PretrainRecipe(), *, on_epoch=None) -> dict:
    """Train the tiny SAM by `recipe`; write its state dict to `out` and the record beside it.

    The record (`record_path(out)`) holds the recipe, the SHA-256 of `out`, the public validation
    Dice per epoch and the zero-shot Dice on the default federation's sites (seed 0, 80 a site).
    """
    public = make_synthetic_sites(recipe.sites, seed=recipe.seed, samples_per_site=recipe.samples_per_site)
    model_config = ModelConfig(arch="tiny", method="fedsam", seed=recipe.seed)
    train_config = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed,
                               device="cpu")
    with tempfile.TemporaryDirectory() as work:
        metrics = train_centralized(public, model_config, train_config, work, on_epoch=on_epoch)
        tensors, _ = load_trainable(Path(work) / "trainable.pt")
    model = build_model(model_config)
    load_trainable_state(model, tensors)
    save_state_dict(out, model.sam.state_dict())
    federation = make_synthetic_sites(3, seed=0, samples_per_site=80)
    record = {
        "recipe": asdict(recipe),
        "sha256": file_sha256(out),
        "public_val_dice": [round(epoch["val"]["dice"], 4) for epoch in metrics["epochs"]],
        "default_federation_zero_shot_dice": round(evaluate_sites(model, federation, train_config)["dice"], 4),
    }
    write_json(record_path(out), record)
    return record
