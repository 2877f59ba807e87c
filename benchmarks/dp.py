"""DP-SGD against plain training: step time and peak memory per method, the fast route's error, the noise.

The plain step is fedmed's `training_step` (forward, Dice+BCE, backward, AdamW). The DP step is
`fedmed.privacy.DPSGD.step` on the same batch: per-unit clipped sums by the fast route (ghost norms
and book-keeping), Gaussian noise from the CSPRNG (as deployed), the same AdamW step; "dp-patient"
is the same with the batch's images in patients of two (unit "patient"). Time: one process per
method takes the kinds' steps in turn on one model (plain, dp, dp-patient, plain, ...), so machine
load hits all alike; medians. Peak memory: every configuration (method x kind) runs once more in a
fresh subprocess (one warm-up step, one step), so its peak is its own: the RSS high-water mark on
the CPU (model, batch and steps included), `torch.cuda.max_memory_allocated` on a GPU.

    python benchmarks/dp.py [--methods fedsam,fedmsa,flap-sam,samed] [--arch tiny|vit_b] [--image-size N]
                            [--batch 8] [--steps 5] [--warmup 1] [--threads N] [--patient] [--error]
                            [--noise N]

Prints one JSON object: per method `plain_step_s`, `dp_step_s`, `dp_over_plain` (time, wall and
CPU), `plain_peak_mb`, `dp_peak_mb`, `dp_over_plain_memory`; with --patient `dp_patient_step_s`
and `patient_over_image`; with --error `clipped_sum_rel_error` (||fast - exact|| / ||exact|| with
the clip norm at the median example norm, the exact route being whole-model vmap); with --noise N
the seconds to draw N values from the CSPRNG, from `torch.randn`, and as Opacus's secure mode does
(4 torch draws), and the ratios. `time_load_avg` is the 1-minute load average before and after the
timing process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opacus.optimizers.optimizer import _generate_noise  # noqa: E402

from fedmed.data import load_sites  # noqa: E402
from fedmed.models import METHODS, ModelConfig, arch_spec, build_model  # noqa: E402
from fedmed.privacy import DPSGD, GaussianNoise, RoundPlan, Units, exact_clipped_sum  # noqa: E402
from fedmed.privacy.fast_clip import FastClipper  # noqa: E402
from fedmed.train import SegmentationLoss, TrainConfig, boxes_from_masks, make_optimizer, training_step  # noqa: E402

KINDS = ("plain", "dp", "dp-patient")


def _batch(size: int, batch: int) -> dict:
    site = load_sites("synthetic", image_size=size, data_seed=0, num_sites=1, samples_per_site=max(batch + 2, 10))[0]
    items = [site.train[i] for i in range(batch)]
    return {"image": torch.stack([x["image"] for x in items]), "mask": torch.stack([x["mask"] for x in items]),
            "id": [x["id"] for x in items]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _clipped_sum_error(model, data: dict) -> dict:
    boxes, present = boxes_from_masks(data["mask"], model.num_classes, jitter=0.1,
                                      generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    args = [t.to(device) for t in (data["image"], boxes, present, data["mask"])]
    units = Units.singletons(len(data["mask"]))
    _, norms = exact_clipped_sum(model, *args, units, max_grad_norm=1e12)
    clip = float(norms.median())
    fast, _, _ = FastClipper(model)(*args, units, max_grad_norm=clip)
    exact, _ = exact_clipped_sum(model, *args, units, max_grad_norm=clip)
    difference = torch.cat([(fast[n] - exact[n]).flatten() for n in model.trainable_names]).norm()
    reference = torch.cat([exact[n].flatten() for n in model.trainable_names]).norm()
    return {"clipped_sum_rel_error": float(difference / reference), "clip_norm": clip,
            "examples_clipped": int((norms > clip).sum())}


def _step_fn(kind: str, model, data: dict, batch: int, device: torch.device):
    """A function taking one step of `kind` on `model` (plain AdamW, or DP-SGD at unit image / patient)."""
    config = TrainConfig(batch_size=batch, device=device.type, box_jitter=0.1)
    if kind == "plain":
        optimizer, loss_fn = make_optimizer(model, config), SegmentationLoss(model.num_classes)
        generator = torch.Generator().manual_seed(0)
        return lambda: training_step(model, data, optimizer, loss_fn, box_jitter=0.1, generator=generator,
                                     mixed_precision=config.mixed_precision)
    patient = kind == "dp-patient"
    units = [i // 2 for i in range(batch)] if patient else None
    plan = RoundPlan(mode="sample", unit="patient" if patient else "image", noise_multiplier=1.0, sample_rate=0.125,
                     steps=1, delta=1e-5, max_grad_norm=1.0, expected_batch_size=len(set(units or range(batch))))
    trainer = DPSGD(model, plan, config)  # seed=None: CSPRNG noise and jitter key, as deployed
    return lambda: trainer.step(data, units)


def worker(args) -> dict:
    """One job in this (fresh) process: `time` (the kinds in turn), a kind's peak memory, or `error`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(ModelConfig(arch=args.arch, method=args.method, image_size=args.image_size)).to(device)
    model.train()
    data = _batch(args.image_size or arch_spec(args.arch).image_size, args.batch)
    if args.worker == "error":
        return _clipped_sum_error(model, data)
    if args.worker != "time":  # peak memory of this kind alone
        step = _step_fn(args.worker, model, data, args.batch, device)
        step()
        step()
        _sync(device)
        return {"peak_mb": _peak_mb(device)}
    kinds = ["plain", "dp"] + (["dp-patient"] if args.patient else [])
    steps = {kind: _step_fn(kind, model, data, args.batch, device) for kind in kinds}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    walls: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpus: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.steps):
        for kind, step in steps.items():
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            walls[kind].append(time.perf_counter() - wall)
            cpus[kind].append(time.process_time() - cpu)
    return {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            **{f"{kind}_step_s": statistics.median(walls[kind]) for kind in kinds},
            **{f"{kind}_step_cpu_s": statistics.median(cpus[kind]) for kind in kinds}}


def _run(job: str, method: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", job, "--method", method, "--arch", args.arch,
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.image_size:
        command += ["--image-size", str(args.image_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.patient:
        command += ["--patient"]
    before = os.getloadavg()[0]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "load_avg": [round(before, 2), round(os.getloadavg()[0], 2)]}


def bench_method(method: str, args) -> dict:
    kinds = ["plain", "dp"] + (["dp-patient"] if args.patient else [])
    timing = _run("time", method, args)
    out = {"trainable_params": timing["trainable_params"], "time_load_avg": timing["load_avg"]}
    for kind in kinds:
        label = kind.replace("-", "_")
        out[f"{label}_step_s"] = round(timing[f"{kind}_step_s"], 4)
        out[f"{label}_step_cpu_s"] = round(timing[f"{kind}_step_cpu_s"], 4)
        out[f"{label}_peak_mb"] = round(_run(kind, method, args)["peak_mb"], 1)
    out["dp_over_plain"] = round(out["dp_step_s"] / out["plain_step_s"], 3)
    out["dp_over_plain_cpu"] = round(out["dp_step_cpu_s"] / out["plain_step_cpu_s"], 3)
    out["dp_over_plain_memory"] = round(out["dp_peak_mb"] / out["plain_peak_mb"], 3)
    if args.patient:
        out["patient_over_image"] = round(out["dp_patient_step_s"] / out["dp_step_s"], 3)
        out["patient_over_image_memory"] = round(out["dp_patient_peak_mb"] / out["dp_peak_mb"], 3)
    if args.error:
        out.update({key: value for key, value in _run("error", method, args).items() if key != "load_avg"})
    return out


def bench_noise(count: int, repeats: int) -> dict:
    """Seconds to draw `count` Gaussian values: the CSPRNG, torch.randn, Opacus's secure mode (4 torch draws)."""
    like, csprng = torch.zeros(1), GaussianNoise()
    fns = {"csprng": lambda: csprng.sample((count,), std=1.0, like=like), "randn": lambda: torch.randn(count),
           "opacus_secure": lambda: _generate_noise(1.0, torch.empty(count), secure_mode=True)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {"values": count, **{f"{name}_s": round(value, 4) for name, value in seconds.items()},
            "csprng_over_randn_speed": round(seconds["randn"] / seconds["csprng"], 3),
            "csprng_over_opacus_secure_speed": round(seconds["opacus_secure"] / seconds["csprng"], 3),
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--arch", default="tiny", choices=["tiny", "vit_b"])
    parser.add_argument("--image-size", type=int, default=None, help="px (default: the preset's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind (medians)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--patient", action="store_true", help="also the patient-level DP step")
    parser.add_argument("--error", action="store_true", help="also the fast route's clipped-sum error")
    parser.add_argument("--noise", type=int, default=0, help="also time drawing this many noise values")
    parser.add_argument("--worker", choices=(*KINDS, "time", "error"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    out = {"arch": args.arch, "image_size": args.image_size or arch_spec(args.arch).image_size, "batch": args.batch,
           "steps": args.steps, "threads": args.threads or torch.get_num_threads(),
           "device": "cuda" if torch.cuda.is_available() else "cpu", "methods": {}}
    for method in [m for m in args.methods.split(",") if m]:
        out["methods"][method] = bench_method(method, args)
    if args.noise:
        if args.threads:
            torch.set_num_threads(args.threads)
        out["noise"] = bench_noise(args.noise, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
