"""DP-SGD step time against the plain step, per method, on the same model preset and batch.

The plain step is fedmed's `training_step` (forward, Dice+BCE, backward, AdamW). The DP step is
`fedmed.privacy.DPSGD.step` on the same batch: per-sample gradients of the trainable tensors
(whole-model vmap), Opacus's clipping and accumulation, Gaussian noise from the CSPRNG (as
deployed) and the same AdamW step. Both start from the same weights; steps alternate between the
two so machine noise hits both alike, and medians are compared.

    python benchmarks/dp.py [--methods fedsam,fedmsa,flap-sam,samed] [--batch 8] [--steps 7]
    python benchmarks/dp.py --routes     # also time per-sample-gradient routes (vmap, chunks, loop)

Prints one JSON object keyed by method: `plain_step_s`, `dp_step_s`, `dp_over_plain` (goal <= 2.0
for flap-sam and fedmsa), and with --routes `routes` (seconds for the per-sample gradients of the
batch by each route, and the plain forward+backward for reference).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmed.data import load_sites  # noqa: E402
from fedmed.models import DEFAULT_PROMPT, METHODS, ModelConfig, build_model  # noqa: E402
from fedmed.privacy import DPSGD, PerSampleGradients, RoundPlan  # noqa: E402
from fedmed.train import SegmentationLoss, TrainConfig, boxes_from_masks, make_optimizer, training_step  # noqa: E402


def _batch(size: int, batch: int) -> dict:
    site = load_sites("synthetic", image_size=size, data_seed=0, num_sites=1, samples_per_site=max(batch + 2, 10))[0]
    items = [site.train[i] for i in range(batch)]
    return {"image": torch.stack([x["image"] for x in items]), "mask": torch.stack([x["mask"] for x in items])}


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _loop_grads(model, images, boxes, present, masks):
    """Reference route: one forward/backward per example."""
    loss_fn = SegmentationLoss(model.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(len(images)):
        loss = loss_fn(model(images[i : i + 1], boxes[i : i + 1], present[i : i + 1]), masks[i : i + 1])
        torch.autograd.grad(loss, params, allow_unused=True)


def bench_method(method: str, batch: dict, *, steps: int, warmup: int, routes: bool) -> dict:
    config = TrainConfig(batch_size=len(batch["mask"]), device="cpu", box_jitter=0.1)
    plain_model = build_model(ModelConfig(method=method))
    dp_model = copy.deepcopy(plain_model)
    plain_model.train()
    dp_model.train()
    loss_fn = SegmentationLoss(plain_model.num_classes)
    optimizer = make_optimizer(plain_model, config)
    generator = torch.Generator().manual_seed(0)
    plan = RoundPlan(mode="sample", noise_multiplier=1.0, sample_rate=0.125, steps=1, delta=1e-5,
                     max_grad_norm=1.0, expected_batch_size=len(batch["mask"]))
    dp = DPSGD(dp_model, plan, config)  # seed=None: CSPRNG noise, as deployed

    steps_fns = {
        "plain": lambda: training_step(plain_model, batch, optimizer, loss_fn, box_jitter=0.1, generator=generator),
        "dp": lambda: dp.step(batch),
    }
    if routes:
        boxes, present = boxes_from_masks(batch["mask"], plain_model.num_classes)
        args = (batch["image"], boxes, present, batch["mask"])
        params = [p for p in plain_model.parameters() if p.requires_grad]
        vmap_all = PerSampleGradients(plain_model)
        vmap_one = PerSampleGradients(plain_model, chunk_size=1)

        def plain_backward():
            loss = loss_fn(plain_model(*args[:3]), args[3])
            torch.autograd.grad(loss, params, allow_unused=True)

        steps_fns.update({
            "route_plain_backward": plain_backward,
            "route_vmap": lambda: vmap_all(*args),
            "route_vmap_chunk1": lambda: vmap_one(*args),
            "route_loop": lambda: _loop_grads(plain_model, *args),
        })
    for _ in range(warmup):
        for fn in steps_fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps_fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in steps_fns}
    for _ in range(steps):
        for name, fn in steps_fns.items():
            wall, cpu = _timed(fn)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    median = {name: statistics.median(values) for name, values in times.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_times.items()}
    result = {
        "prompt": DEFAULT_PROMPT[method],
        "trainable_params": sum(p.numel() for p in plain_model.parameters() if p.requires_grad),
        "plain_step_s": round(median["plain"], 4),
        "dp_step_s": round(median["dp"], 4),
        "dp_over_plain": round(median["dp"] / median["plain"], 3),
        "plain_step_cpu_s": round(cpu["plain"], 4),
        "dp_step_cpu_s": round(cpu["dp"], 4),
        "dp_over_plain_cpu": round(cpu["dp"] / cpu["plain"], 3),
    }
    if routes:
        result["routes"] = {name[len("route_"):]: round(value, 4) for name, value in median.items()
                            if name.startswith("route_")}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--arch", default="tiny", choices=["tiny"], help="the tiny preset (CPU-sized)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=7, help="timed steps of each kind (medians)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--routes", action="store_true", help="also time per-sample-gradient routes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = _batch(128, args.batch)
    out = {}
    for method in args.methods.split(","):
        out[method] = bench_method(method, batch, steps=args.steps, warmup=args.warmup, routes=args.routes)
        out[method].update(batch=args.batch, steps=args.steps, torch_threads=torch.get_num_threads())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
