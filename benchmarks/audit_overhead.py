"""What the audit log costs a federated round: fedmsa on the tiny preset, 3 synthetic sites, in-process.

    python benchmarks/audit_overhead.py [--rounds 3] [--samples-per-site 80] [--strict] [--ab]

The run goes through the real ClientApp and server loop (`InProcessGrid`), every site with its
audit log, so a round is: the sites train one after the other, each logs the message's entries in
one batch (`fedmed.fl.site_hooks._finish`: the tensors it received and sent, its decisions), and the
server logs what it sends and receives (`AuditedGrid`). The time spent in those audit calls is
measured directly (wall and process CPU) and compared with the round:

- `audit_s` / `audit_cpu_s`: per round, the median over rounds 2.. (round 1 also makes the keys)
- `round_s` / `round_cpu_s`: the round's wall and CPU time, audit included
- `overhead_pct`: 100 * audit_s / (round_s - audit_s), the goal is <= 5; `overhead_cpu_pct` likewise
- `entries_per_round`: entries of all parties a round; `bytes_hashed_per_round`: tensor bytes hashed
- with `--ab`: the same run again without any audit log (the server loop alone), interleaved by
  round count, and `ab_round_s` medians of both, a check of the direct measurement
- `witnessing`: what head witnessing (`audit.heads`, issue 12) adds to a round, measured on the run's
  own logs, reopened: per site and round, the site signs its head after its message's entries, the
  head goes to the server as text, the server checks it (Ed25519) and writes a `witness` entry into
  its batch; the server signs its head for the next message, the site checks it and writes a
  `witness` entry into its batch. The entries ride in batches that are fsynced anyway, so an entry's
  cost is taken in a batch of 64 (`witness_entry_s`), without an fsync of its own.
  `witness_overhead_pct` = 100 * witness_s_per_round / round_s (the median round, audit included).

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

from audit import LogHead, check_head, open_party_log  # noqa: E402
from fedmed.fl import server_audit, site_hooks  # noqa: E402
from fedmed.fl.client_app import make_client_app  # noqa: E402
from fedmed.fl.enrolment import secure_simulation  # noqa: E402
from fedmed.fl.equip import equip_sites  # noqa: E402
from fedmed.fl.inprocess import InProcessGrid  # noqa: E402
from fedmed.fl.plan import ModelSpec, RunPlan  # noqa: E402
from fedmed.fl.rounds import Federation, run_federation  # noqa: E402
from fedmed.fl.site import SiteSettings  # noqa: E402


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


def _sites(out: Path, samples: int, policy: str | None) -> list[SiteSettings]:
    """Three synthetic sites; with a policy, each also with its audit log (`equip_sites`)."""
    base = [SiteSettings(partition=k, num_sites=3, samples_per_site=samples, device="cpu") for k in range(3)]
    return equip_sites(base, out=out, policy=policy) if policy is not None else base


def _plan(out: Path, rounds: int, strict: bool) -> RunPlan:
    return RunPlan(model=ModelSpec(arch="tiny", method="fedmsa"), rounds=rounds, num_clients=3, min_clients=2,
                   join_timeout=1, out=str(out),
                   privacy={"mode": "sample", "noise_multiplier": 1.0} if strict else {"mode": "none"})


def _grid(sites: list[SiteSettings]) -> InProcessGrid:
    return InProcessGrid(make_client_app(lambda context: sites[int(context.node_config["partition-id"])]),
                         [{"partition-id": k} for k in range(len(sites))])


def audited_run(rounds: int, samples: int, strict: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="fedmed-audit-bench-"))
    plan, sites = _plan(out, rounds, strict), _sites(out, samples, "strict" if strict else "research")
    if strict:
        plan, sites = secure_simulation(plan, sites, enabled=True)
    clock, per_round, last = Clock(), [], {"wall": 0.0, "cpu": 0.0, "t": time.perf_counter(), "c": time.process_time()}
    site_hooks._finish = clock.wrap(site_hooks._finish)
    server_audit.AuditedGrid._outgoing = clock.wrap(server_audit.AuditedGrid._outgoing)
    server_audit.AuditedGrid._incoming = clock.wrap(server_audit.AuditedGrid._incoming)

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
    return {"rounds": per_round, "entries_per_round": lines / rounds, "bytes_hashed_per_round": hashed / rounds,
            "witnessing": witnessing(out, sites)}


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def witnessing(out: Path, sites: list[SiteSettings], repeats: int = 200) -> dict:
    """Per round: each site's head to the server and the server's head to each site (see the module doc)."""
    site_dir = Path(sites[0].audit_dir)
    party = sorted(p.stem for p in site_dir.glob("*.jsonl") if p.stem != "server")[0]
    site_key = Path(sites[0].state_dir) / party / "audit.key"
    server = open_party_log(out / "audit", "server", key_path=out / "state" / "server" / "audit.key")
    site = open_party_log(site_dir, party, key_path=site_key if site_key.exists() else None)
    for log in (server, site):
        log.run_start(role="benchmark")
    try:
        head_s = _median_s(site.head, repeats)  # either side signs its head alike
        wire = site.head().to_wire()
        received = LogHead.from_wire(wire)
        check_s = _median_s(lambda: check_head(LogHead.from_wire(wire), public_key=site.key.public_key,
                                               party=party), repeats)
        batch = [("witness", received.witness_body(round=1))] * 64
        entry_s = _median_s(lambda: server.append_many(batch), 15) / len(batch)
    finally:
        for log in (server, site):
            log.run_end(status="aborted", message="benchmark entries")
            log.close()
    per_message = 2 * (head_s + check_s + entry_s)  # site -> server and server -> site
    return {"head_sign_s": head_s, "head_check_s": check_s, "witness_entry_s": entry_s,
            "head_wire_bytes": len(wire), "witness_s_per_round": per_message * len(sites), "sites": len(sites)}


def plain_run(rounds: int, samples: int) -> list[float]:
    out = Path(tempfile.mkdtemp(prefix="fedmed-audit-bench-"))
    walls, last = [], [time.perf_counter()]

    def on_round(_record: dict) -> None:
        walls.append(time.perf_counter() - last[0])
        last[0] = time.perf_counter()

    Federation(_grid(_sites(out, samples, None)), _plan(out, rounds, False), on_round=on_round).run()
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
        "witnessing": {**{k: round(v, 7) if isinstance(v, float) else v for k, v in result["witnessing"].items()},
                       "witness_overhead_pct": round(100 * result["witnessing"]["witness_s_per_round"]
                                                     / med["round_s"], 4)},
        "per_round": result["rounds"],
    }
    if ab is not None:
        report["ab_round_s"] = {"without_audit": round(statistics.median(ab[1:] or ab), 3),
                                "with_audit": round(med["round_s"], 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
