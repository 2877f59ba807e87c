"""fedmed's training step against a bare PyTorch loop on the same model and batch.

The bare loop precomputes the box prompts and runs forward, loss, backward and AdamW step; fedmed's
`training_step` also derives (jittered) boxes from the masks every step, as training does. Steps
alternate between the two so machine noise hits both alike; medians are compared.

    python benchmarks/train_step.py [--method fedmsa] [--arch tiny] [--batch 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fedmed.models import ModelConfig, build_model
from fedmed.train import SegmentationLoss, TrainConfig, boxes_from_masks, make_optimizer, training_step


def _batch(batch_size: int, size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(batch_size, size, size, dtype=torch.long)
    for i in range(batch_size):
        y, x = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        masks[i, y : y + size // 3, x : x + size // 4] = 1
    return {"image": torch.rand(batch_size, 3, size, size, generator=generator) * 255, "mask": masks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="fedmsa")
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    model = build_model(ModelConfig(arch=args.arch, method=args.method))
    batch = _batch(args.batch, model.image_size)
    loss_fn = SegmentationLoss(model.num_classes)
    optimizer = make_optimizer(model, TrainConfig())
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes)
    generator = torch.Generator().manual_seed(0)
    model.train()

    def bare_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch["image"], boxes, present), batch["mask"])
        loss.backward()
        optimizer.step()

    def fedmed_step() -> None:
        training_step(model, batch, optimizer, loss_fn, box_jitter=0.1, generator=generator)

    for _ in range(3):
        bare_step()
        fedmed_step()
    times = {"bare": [], "fedmed": []}
    for _ in range(args.steps):
        for name, step in (("bare", bare_step), ("fedmed", fedmed_step)):
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    bare, fedmed = statistics.median(times["bare"]), statistics.median(times["fedmed"])
    print(json.dumps({
        "method": args.method, "arch": args.arch, "batch": args.batch, "steps": args.steps,
        "bare_step_s": bare, "fedmed_step_s": fedmed, "fedmed_over_bare": fedmed / bare,
        "images_per_s": args.batch / fedmed, "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
