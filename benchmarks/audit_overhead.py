"""What the audit log costs a federated round: fedmsa on the tiny preset, 3 synthetic sites, in-process.

    python benchmarks/audit_overhead.py [--rounds 3] [--samples-per-site 80] [--strict] [--ab]

The run goes through the real ClientApp and server loop (`InProcessGrid`), every site with its
audit log, so a round is: the sites train one after the other, each logs the message's entries in
one batch (`fedmed.fl.site.journal.journal`: the tensors it received and sent, its decisions), and the
server logs what it sends and receives (`ServerJournal`). The time spent in those audit calls is
measured directly (wall and process CPU) and compared with the round:

- `audit_s` / `audit_cpu_s`: per round, the median over rounds 2.. (round 1 also makes the keys)
- `round_s` / `round_cpu_s`: the round's wall and CPU time, audit included
- `overhead_pct`: 100 * audit_s / (round_s - audit_s), the goal is <= 5; `overhead_cpu_pct` likewise
- `entries_per_round`: entries of all parties a round; `bytes_hashed_per_round`: tensor bytes hashed
- with `--ab`: the same run again without any audit log (the server loop alone), interleaved by
  round count, and `ab_round_s` medians of both, a check of the direct measurement

`--strict`: the default platform round (secure aggregation and DP-SGD, noise multiplier 1.0)
instead of plain FedAvg without DP, which is the shortest round and so the worst case for the ratio.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedmed.config import PrivacySection  # noqa: E402
from fedmed.fl.launch.inprocess import InProcessGrid  # noqa: E402
from fedmed.fl.launch.simulation import prepare_simulation, simulation_sites  # noqa: E402
from fedmed.fl.plan import RunPlan, make_plan  # noqa: E402
from fedmed.fl.server.journal import ServerJournal  # noqa: E402
from fedmed.fl.server.rounds import Federation, run_federation  # noqa: E402
from fedmed.fl.site import pipeline  # noqa: E402
from fedmed.fl.site.client_app import make_client_app  # noqa: E402
from fedmed.fl.site.settings import SiteSettings  # noqa: E402


class Clock:
    """Wall and CPU seconds spent inside the wrapped functions."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.process_time() - cpu
        return timed


def _plan(out: Path, rounds: int, strict: bool) -> RunPlan:
    privacy = PrivacySection(mode="sample", noise_multiplier=1.0) if strict else PrivacySection(mode="none")
    return make_plan(federation={"rounds": rounds}, model={"arch": "tiny", "method": "fedmsa"},
                     secure_aggregation={"enabled": strict}, privacy=privacy, num_clients=3, join_timeout=1,
                     out=str(out))


def _sites(plan: RunPlan, samples: int, *, audit: bool) -> tuple[RunPlan, list[SiteSettings]]:
    """Three synthetic sites, each with its policy and, if `audit`, its audit log (`prepare_simulation`)."""
    sites = simulation_sites("synthetic", clients=3, samples_per_site=samples, device="cpu")
    policy = ("strict" if plan.secure_aggregation.enabled else "research") if audit else None
    return prepare_simulation(plan, sites, policy=policy, audit=audit)


def _grid(sites: list[SiteSettings]) -> InProcessGrid:
    return InProcessGrid(make_client_app(lambda context: sites[int(context.node_config["partition-id"])]),
                         [{"partition-id": k} for k in range(len(sites))])


def audited_run(rounds: int, samples: int, strict: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="fedmed-audit-bench-"))
    plan, sites = _sites(_plan(out, rounds, strict), samples, audit=True)
    clock, per_round, last = Clock(), [], {"wall": 0.0, "cpu": 0.0, "t": time.perf_counter(), "c": time.process_time()}
    pipeline.journal = clock.wrap(pipeline.journal)
    ServerJournal.outgoing = clock.wrap(ServerJournal.outgoing)
    ServerJournal.incoming = clock.wrap(ServerJournal.incoming)

    def on_round(record: dict) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        per_round.append({"round_s": now - last["t"], "round_cpu_s": cpu - last["c"],
                          "audit_s": clock.wall - last["wall"], "audit_cpu_s": clock.cpu - last["cpu"],
                          "dice": record["mean_dice"]})
        last.update(wall=clock.wall, cpu=clock.cpu, t=now, c=cpu)

    run_federation(_grid(sites), plan, on_round=on_round)
    lines = sum(len(p.read_text().splitlines()) for p in (out / "audit").glob("*.jsonl"))
    hashed = sum(json.loads(line)["body"].get("nbytes", 0) for p in (out / "audit").glob("*.jsonl")
                 for line in p.read_text().splitlines())
    return {"rounds": per_round, "entries_per_round": lines / rounds, "bytes_hashed_per_round": hashed / rounds}


def plain_run(rounds: int, samples: int) -> list[float]:
    out = Path(tempfile.mkdtemp(prefix="fedmed-audit-bench-"))
    walls, last = [], [time.perf_counter()]

    def on_round(_record: dict) -> None:
        walls.append(time.perf_counter() - last[0])
        last[0] = time.perf_counter()

    plan, sites = _sites(_plan(out, rounds, False), samples, audit=False)
    Federation(_grid(sites), plan, None, on_round=on_round).run()
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples-per-site", type=int, default=80)
    parser.add_argument("--strict", action="store_true", help="secure aggregation and DP-SGD")
    parser.add_argument("--ab", action="store_true", help="also time the same run without audit logs")
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    ab = plain_run(args.rounds, args.samples_per_site) if args.ab else None
    result = audited_run(args.rounds, args.samples_per_site, args.strict)
    later = result["rounds"][1:] or result["rounds"]
    med = {k: statistics.median(r[k] for r in later) for k in ("round_s", "round_cpu_s", "audit_s", "audit_cpu_s")}
    report = {
        "setup": {"method": "fedmsa", "arch": "tiny", "sites": 3, "samples_per_site": args.samples_per_site,
                  "rounds": args.rounds, "round": "secure aggregation + DP-SGD" if args.strict else "plain, no DP",
                  "engine": "in-process (sites one after the other)"},
        **{k: round(v, 4) for k, v in med.items()},
        "overhead_pct": round(100 * med["audit_s"] / (med["round_s"] - med["audit_s"]), 3),
        "overhead_cpu_pct": round(100 * med["audit_cpu_s"] / (med["round_cpu_s"] - med["audit_cpu_s"]), 3),
        "entries_per_round": result["entries_per_round"],
        "bytes_hashed_per_round": result["bytes_hashed_per_round"],
        "per_round": result["rounds"],
    }
    if ab is not None:
        report["ab_round_s"] = {"without_audit": round(statistics.median(ab[1:] or ab), 3),
                                "with_audit": round(med["round_s"], 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
