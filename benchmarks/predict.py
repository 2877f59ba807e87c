"""Predict throughput on this machine, and the default federation's Dice in both prompt modes.

    python benchmarks/predict.py [--slices 16] [--batch-size 8] [--models tiny@128,tiny@256,vit_b@256] [--dice]

Throughput: `Predictor.labels` over one volume of `--slices` slices of 256 x 256 voxels (CT, HU),
as `fedmed predict` runs a NIfTI case after reading it: each slice resized to the model's input,
the forward pass in batches, the logits resized back and the labels taken. A first batch warms up
and is not counted. `slices_per_s` = slices / seconds. Models: fedmsa on the preset at the given
input size (random weights for ViT presets: speed does not depend on them).

`--dice`: the built-in tiny weights (fedmsa, no training) on the validation split of the default
federation (3 synthetic sites x 80 pictures, seed 0) with `fedmed.train.evaluate.validate`, once
without prompts and once with oracle boxes. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmed.data import load_sites  # noqa: E402
from fedmed.inference import ModelBundle, Normalisation, Predictor, make_card  # noqa: E402
from fedmed.inference.case import InputCase  # noqa: E402
from fedmed.models import ModelConfig, build_model, trainable_state  # noqa: E402
from fedmed.models.pretrained import starting_checkpoint  # noqa: E402
from fedmed.train.evaluate import validate  # noqa: E402


def bundle_for(arch: str, image_size: int) -> ModelBundle:
    config = ModelConfig(arch=arch, method="fedmsa", image_size=image_size,
                         checkpoint=starting_checkpoint(arch, None, pretrained=True))
    card = make_card(config, class_names=["background", "organ"], normalisation=Normalisation(source="nifti",
                                                                                             modality="CT"))
    return ModelBundle(card, trainable_state(build_model(config)), Path("benchmark"))


def volume(slices: int) -> InputCase:
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 60, (256, 256, slices)).astype(np.float32)
    pixels = np.clip((hu + 160) / 400, 0, 1).astype(np.float32) * 255
    return InputCase("bench", None, "nifti", pixels, (1.0, 1.0, 2.5))


def throughput(arch: str, image_size: int, *, slices: int, batch_size: int) -> dict:
    predictor = Predictor(bundle_for(arch, image_size), batch_size=batch_size)
    predictor.labels(volume(batch_size))  # warm-up
    case = volume(slices)
    started = time.perf_counter()
    predictor.labels(case)
    seconds = time.perf_counter() - started
    return {"arch": arch, "image_size": image_size, "slices": slices, "seconds": round(seconds, 3),
            "slices_per_s": round(slices / seconds, 3), "s_per_slice": round(seconds / slices, 4)}


def prompt_mode_dice() -> dict:
    sites = load_sites("synthetic", image_size=128, seed=0, num_sites=3, samples_per_site=80)
    model = build_model(ModelConfig(method="fedmsa", checkpoint=starting_checkpoint("tiny", None, pretrained=True)))
    result = {}
    for prompt in ("none", "oracle-boxes"):
        scores = [validate(model, s.val, class_names=s.class_names, prompt=prompt) for s in sites]
        weights = [s.cases for s in scores]
        result[prompt] = {"mean_dice": round(sum(s.dice * w for s, w in zip(scores, weights)) / sum(weights), 4),
                          "per_site": {s.name: round(r.dice, 4) for s, r in zip(sites, scores)}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--models", default="tiny@128,tiny@256,vit_b@256", help="ARCH@SIZE, comma-separated")
    parser.add_argument("--dice", action="store_true", help="also the built-in weights' Dice in both prompt modes")
    args = parser.parse_args()
    runs = []
    for entry in args.models.split(","):
        arch, size = entry.split("@")
        runs.append(throughput(arch, int(size), slices=args.slices, batch_size=args.batch_size))
    record = {"device": "cpu", "torch_threads": torch.get_num_threads(), "load_1min": round(os.getloadavg()[0], 2),
              "batch_size": args.batch_size, "throughput": runs}
    if args.dice:
        record["builtin_fedmsa_val_dice"] = prompt_mode_dice()
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
