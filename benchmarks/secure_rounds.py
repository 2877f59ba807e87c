"""What secure aggregation adds to a federated round: the default `fedmed simulate` federation (tiny
SAM, FedMSA, 3 synthetic sites), run plain and secure side by side, alternating run by run.

    python benchmarks/secure_rounds.py                      # in-process grid, 3 rounds, 2 runs each
    python benchmarks/secure_rounds.py --engine ray         # Flower's simulation engine, as `fedmed simulate`

Sites have no policy, DP or site audit log, so the difference between the two
columns is secure aggregation alone: 4 more message exchanges a round (setup, share keys,
consistency, unmask; the masked input rides with the train message), the key agreements, masking
and unmasking. Per round: wall seconds (the median over every round of every run, and the
median without each run's first round), bytes per site sent and received (every message, as
Flower serialises it), and for secure rounds the seconds of each SecAgg stage as the server saw
it (send, site work, receive, its own work). One JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from flwr.supercore.task_identity import TaskIdentity

from fedmed.config import PrivacySection
from fedmed.fl.launch.inprocess import run_inprocess
from fedmed.fl.launch.simulation import prepare_simulation, simulate, simulation_sites
from fedmed.fl.plan import make_plan


def run(mode: str, out: Path, args: argparse.Namespace) -> dict:
    plan = make_plan(federation={"rounds": args.rounds, "min_clients": 2}, model={"image_size": args.image_size},
                     secure_aggregation={"enabled": mode == "secure"}, privacy=PrivacySection(mode="none"),
                     num_clients=args.sites, out=str(out))
    sites = simulation_sites("synthetic", clients=args.sites, samples_per_site=args.samples_per_site, device="cpu")
    plan, sites = prepare_simulation(plan, sites, policy=None, audit=False)
    if args.engine == "ray":
        return simulate(plan, sites)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return run_inprocess(plan, sites)


def summary(runs: list[dict]) -> dict:
    rounds = [r for m in runs for r in m["rounds"]]
    later = [r for m in runs for r in m["rounds"][1:]]
    sites = [s for r in rounds for s in r["sites"].values()]
    out = {
        "round_s_median": statistics.median(r["wall_s"] for r in rounds),
        "round_s_median_after_first": statistics.median(r["wall_s"] for r in later) if later else None,
        "round_s": [round(r["wall_s"], 3) for r in rounds],
        "bytes_sent_per_site": statistics.median(s["bytes_sent"] for s in sites),
        "bytes_received_per_site": statistics.median(s["bytes_received"] for s in sites),
        "final_mean_dice": [m["rounds"][-1]["mean_dice"] for m in runs],
    }
    if rounds[0].get("secure_aggregation"):
        stages = rounds[0]["secagg"]["stage_s"]
        out["stage_s_median"] = {k: statistics.median(r["secagg"]["stage_s"][k] for r in rounds) for k in stages}
        out["secagg_bytes_per_site"] = {
            "sent": statistics.median(s["bytes"]["secagg_sent"] for s in sites),
            "received": statistics.median(s["bytes"]["secagg_received"] for s in sites),
        }
        out["train_bytes_per_site"] = {"sent": statistics.median(s["bytes"]["train_sent"] for s in sites),
                                       "received": statistics.median(s["bytes"]["train_received"] for s in sites)}
        out["error_bound"] = rounds[0]["secagg"]["error_bound"]
        out["precision_bits"] = rounds[0]["secagg"]["precision_bits"]
        out["modulus_bits"] = rounds[0]["secagg"]["modulus_bits"]
    else:
        out["train_bytes_per_site"] = {"sent": statistics.median(s["bytes"]["train_sent"] for s in sites),
                                       "received": statistics.median(s["bytes"]["train_received"] for s in sites)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="runs of each mode, alternating")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--samples-per-site", type=int, default=None, help="[the generator's default, 80]")
    parser.add_argument("--image-size", type=int, default=None, help="[the tiny preset's]")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"plain": [], "secure": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            for mode in ("plain", "secure"):
                print(f"run {k + 1}/{args.runs}: {mode}", file=sys.stderr, flush=True)
                results[mode].append(run(mode, Path(tmp) / f"{mode}-{k}", args))
    plain, secure = summary(results["plain"]), summary(results["secure"])
    key = "round_s_median_after_first" if args.rounds > 1 else "round_s_median"
    report = {
        "engine": args.engine, "model": "tiny fedmsa", "sites": args.sites, "rounds": args.rounds, "runs": args.runs,
        "samples_per_site": args.samples_per_site or 80, "image_size": args.image_size,
        "plain": plain, "secure": secure,
        "overhead": {
            "round_s": secure[key] - plain[key],
            "round_pct": 100 * (secure[key] / plain[key] - 1),
            "bytes_sent_per_site": secure["bytes_sent_per_site"] - plain["bytes_sent_per_site"],
            "bytes_received_per_site": secure["bytes_received_per_site"] - plain["bytes_received_per_site"],
            "bytes_pct": 100 * ((secure["bytes_sent_per_site"] + secure["bytes_received_per_site"])
                                / (plain["bytes_sent_per_site"] + plain["bytes_received_per_site"]) - 1),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
