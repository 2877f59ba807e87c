"""Remake fedmed's built-in tiny SAM weights (fedmed/models/weights/sam_tiny_public.pth + .json).

    .venv/bin/python scripts/make_tiny_checkpoint.py            # about a minute on 2 CPU cores

The recipe is `fedmed.train.pretrain.PretrainRecipe`; training runs on the CPU with fixed seeds.
"""

from __future__ import annotations

import json

import torch

from fedmed.models.pretrained import BUILTIN_WEIGHTS
from fedmed.train.pretrain import pretrain_tiny


def main() -> None:
    torch.set_num_threads(2)  # the thread count the shipped file was made with (reductions follow it)
    record = pretrain_tiny(BUILTIN_WEIGHTS["tiny"], on_epoch=lambda epoch, r: print(
        f"epoch {epoch}: public validation Dice {r['val']['dice']:.3f}", flush=True))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
