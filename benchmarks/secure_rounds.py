"""What secure aggregation adds to a federated round: the default `fedmed simulate` federation (tiny
SAM, FedMSA, 3 synthetic sites), run plain and secure side by side, alternating run by run.

    python benchmarks/secure_rounds.py                      # in-process grid, 3 rounds, 2 runs each
    python benchmarks/secure_rounds.py --engine ray         # Flower's simulation engine, as `fedmed simulate`
    python benchmarks/secure_rounds.py --checks --rounds 2 --runs 1   # + issue 11's checks, function by function
    python benchmarks/secure_rounds.py --checks --runs 0 --history 10000   # the checks alone, a long memory

Sites have no policy, DP or site audit log, so the difference between the two
columns is secure aggregation alone: 4 more message exchanges a round (setup, share keys,
consistency, unmask; the masked input rides with the train message), the key agreements, masking
and unmasking. Per round: wall seconds (the median over every round of every run, and the
median without each run's first round), bytes per site sent and received (every message, as
Flower serialises it), and for secure rounds the seconds of each SecAgg stage as the server saw
it (send, site work, receive, its own work). One JSON object.

`--checks` adds what the defences of issue 11 cost one site a round, each timed directly at 3 and 10
participants (the median of `--repeats`), and that against the measured secure round:

- `setup`: the site answering a setup (`answer_stage`: the transcript against the setup and its
  enrolment, the config, its admission with the real participants, the release memory's locked
  check and its fsync'd append of the session id) minus the protocol's own setup
  (`ClientSession.handle`: key pairs and signature)
- `transcript_digest`: one SHA-256 of the transcript (a site computes it at the setup; the
  parse is in `setup`)
- `train_check`: the train message against the transcript (the instructions compared, `differences`
  only where they differ, and the SHA-256 of the global vector, hashed once) and the training seed
  (HMAC of that digest under the site's key)
- `sum_checks`: the release memory before signing and before revealing (two locked checks) and
  remembering the sum (a locked, fsync'd append)
- `survivor_signature`: signing (U1, U3) and verifying a quorum of signatures on it (U1 is new)

with a release memory that already holds `--history` earlier rounds (it grows by one session and
one sum a round), and with DP off and on (DP adds the ledger's projection to the setup's admission).
The site's runtime keeps its release memory indexed, so the checks read only what was appended since;
`memory_first_read_ms` is what a process pays once to read a `--history` memory. `ms` is wall time,
`cpu_ms` this process's CPU time (the rest is waiting, mostly for the disk to sync the release memory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmed.config import PrivacySection
from fedmed.fl.enrolment import Roster, load_identity
from fedmed.fl.launch.inprocess import run_inprocess
from fedmed.fl.launch.simulation import prepare_simulation, simulate, simulation_sites
from fedmed.fl.plan import make_plan
from fedmed.fl.server.rounds import round_instructions
from fedmed.fl.site.masking import answer_stage
from fedmed.fl.site.releases import ReleaseMemory, SessionEntry, SumEntry, UnmaskedSum
from fedmed.fl.site.runtime import SiteRuntime
from fedmed.fl.site.session import SiteSession
from fedmed.fl.site.training import training_seed
from fedmed.fl.wire.messages import SECAGG_KEY, SECAGG_ROUND
from fedmed.fl.wire.secagg import round_config, stage_record
from fedmed.fl.wire.transcript import RoundTranscript, Weighting, differences, vector_sha256
from fedmed.models import trainable_state
from secure_agg import ClientSession, crypto
from secure_agg.messages import Setup, survivors_payload


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


def _median_s(fn, repeats: int) -> np.ndarray:
    """[wall, cpu] seconds of `fn()`, each the median of `repeats` calls."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return np.median(np.array(times), axis=0)


def check_costs(sites: int, *, dp: bool, history: int, repeats: int, out: Path) -> dict:
    """Seconds one site spends a round on the checks of issue 11 (see the module docstring)."""
    privacy = PrivacySection(mode="sample", epsilon=8.0) if dp else PrivacySection(mode="none")
    plan = make_plan(federation={"rounds": 5, "min_clients": 2}, secure_aggregation={"enabled": True},
                     privacy=privacy, num_clients=sites, out=str(out))
    plan, settings = prepare_simulation(plan, simulation_sites("synthetic", clients=sites, device="cpu"),
                                        policy="research", audit=False)
    site, roster = settings[0], Roster.load(plan.roster)
    runtime, identity = SiteRuntime(site), load_identity(site.identity)
    instructions = round_instructions(plan, 1, num_classes=2, num_clients=sites, run_id="bench")
    probe = SiteSession(site, runtime, None, "secure aggregation")
    probe.prepare(instructions)  # builds the site's data and model once, as a running site has them
    layout = probe.layout
    start = layout.flatten(trainable_state(probe.model))
    participants = tuple(range(1, sites + 1))
    config = round_config(plan.secure_aggregation, num_clients=sites, vector_length=layout.numel + 1)

    def transcript(k: int) -> RoundTranscript:
        return RoundTranscript(run_id=f"bench/{k}", round=1, roster=roster.digest, participants=participants,
                               config=config, weighting=Weighting(max_weight=64.0), global_sha256=vector_sha256(start),
                               instructions=instructions)

    memory = runtime.releases(probe.state_dir)  # the site's own: it keeps the journal indexed across rounds
    earlier = [UnmaskedSum(session=f"old/{k}", global_sha256=f"{k:064x}", survivors=participants, dp=dp)
               for k in range(history)]
    memory.folder.mkdir(parents=True, exist_ok=True)
    memory.path.write_text("".join(entry.model_dump_json() + "\n" for s in earlier for entry in (
        SessionEntry(roster=roster.digest, session=s.session), SumEntry(roster=roster.digest, sum=s))))
    opened = time.perf_counter(), time.process_time()
    ReleaseMemory(probe.state_dir).check_sum(roster.digest, global_sha256="0" * 64, survivors=participants, dp=False)
    first_read = time.perf_counter() - opened[0], time.process_time() - opened[1]  # once per process
    scripts = [transcript(k) for k in range(2 * repeats)]

    def setup_content(script: RoundTranscript) -> RecordDict:
        setup = Setup(round_id=script.session_id, recipient=1, config=config, participants=list(participants))
        return RecordDict({SECAGG_KEY: stage_record(setup.to_bytes()), SECAGG_ROUND: script.record()})

    def answer(script: RoundTranscript) -> None:
        context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
        answer_stage(SiteSession(site, runtime, context, "secure aggregation"), setup_content(script))

    def protocol(script: RoundTranscript) -> None:
        setup = Setup(round_id=script.session_id, recipient=1, config=config, participants=list(participants))
        ClientSession(1, identity.private, roster.ids, round_id=script.session_id).handle(setup.to_bytes())

    answers, protocols = iter(scripts[:repeats]), iter(scripts[repeats:])
    script = scripts[0]
    train_session = SiteSession(site, runtime, None, "train")
    train_session.prepare(instructions)
    survivors = list(participants)
    payload = survivors_payload(script.session_id, config.digest(), survivors, survivors)
    signatures = [crypto.sign(identity.private, payload) for _ in range(config.quorum(sites))]

    def sums() -> None:
        for _ in range(2):
            memory.check_sum(roster.digest, global_sha256=script.global_sha256, survivors=participants, dp=dp)
        memory.record_sum(roster.digest, session=script.session_id, global_sha256=script.global_sha256,
                          survivors=participants, dp=dp)

    def signing() -> None:
        message = survivors_payload(script.session_id, config.digest(), survivors, survivors)
        crypto.sign(identity.private, message)
        for signature in signatures:
            crypto.verify(identity.public, signature, message)

    expected = instructions.model_dump(mode="json")
    costs = {
        "setup": _median_s(lambda: answer(next(answers)), repeats) - _median_s(lambda: protocol(next(protocols)),
                                                                              repeats),
        "transcript_digest": _median_s(lambda: script.digest, repeats),
        "train_check": _median_s(lambda: (script.instructions == instructions  # as SecureRelease.prepare
                                          or differences(expected, instructions.model_dump(mode="json")),
                                          training_seed(train_session, vector_sha256(start))), repeats),
        "sum_checks": _median_s(sums, repeats),
        "survivor_signature": _median_s(signing, repeats),
    }
    costs["total"] = sum(costs.values())
    return {"sites": sites, "dp": dp, "history": history, "vector_length": layout.numel,
            "memory_first_read_ms": round(1e3 * first_read[0], 3),
            "memory_first_read_cpu_ms": round(1e3 * first_read[1], 3),
            "ms": {k: round(1e3 * float(v[0]), 3) for k, v in costs.items()},
            "cpu_ms": {k: round(1e3 * float(v[1]), 3) for k, v in costs.items()}}


def compare(args: argparse.Namespace) -> dict:
    """Plain and secure runs side by side (see the module docstring)."""
    results: dict[str, list[dict]] = {"plain": [], "secure": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            for mode in ("plain", "secure"):
                print(f"run {k + 1}/{args.runs}: {mode}", file=sys.stderr, flush=True)
                results[mode].append(run(mode, Path(tmp) / f"{mode}-{k}", args))
    plain, secure = summary(results["plain"]), summary(results["secure"])
    key = "round_s_median_after_first" if args.rounds > 1 else "round_s_median"
    return {
        "engine": args.engine, "model": "tiny fedmsa", "sites": args.sites, "rounds": args.rounds, "runs": args.runs,
        "samples_per_site": args.samples_per_site or 80, "image_size": args.image_size,
        "plain": plain, "secure": secure, "round_s": secure[key],
        "overhead": {
            "round_s": secure[key] - plain[key],
            "round_pct": 100 * (secure[key] / plain[key] - 1),
            "bytes_sent_per_site": secure["bytes_sent_per_site"] - plain["bytes_sent_per_site"],
            "bytes_received_per_site": secure["bytes_received_per_site"] - plain["bytes_received_per_site"],
            "bytes_pct": 100 * ((secure["bytes_sent_per_site"] + secure["bytes_received_per_site"])
                                / (plain["bytes_sent_per_site"] + plain["bytes_received_per_site"]) - 1),
        },
    }


def checks(args: argparse.Namespace, round_s: float | None) -> list[dict]:
    """`check_costs` at 3 and 10 sites, DP off and on, an empty and a `--history` memory; with the
    share of a secure round of `round_s` seconds they take (None: no round was measured)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    with tempfile.TemporaryDirectory() as tmp:
        entries = [check_costs(n, dp=dp, history=history, repeats=args.repeats, out=Path(tmp) / f"{n}-{dp}-{history}")
                   for n in (3, 10) for dp in (False, True) for history in (0, args.history)]
    for entry in entries if round_s else []:
        per_site = entry["ms"]["total"] / 1e3
        entry["pct_of_secure_round"] = round(100 * per_site / round_s, 4)  # sites check side by side
        entry["pct_of_secure_round_sequential"] = round(100 * per_site * entry["sites"] / round_s, 4)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="runs of each mode, alternating (0: --checks alone)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--samples-per-site", type=int, default=None, help="[the generator's default, 80]")
    parser.add_argument("--image-size", type=int, default=None, help="[the tiny preset's]")
    parser.add_argument("--checks", action="store_true", help="also time issue 11's checks at 3 and 10 sites")
    parser.add_argument("--repeats", type=int, default=20, help="repeats of each check (--checks)")
    parser.add_argument("--history", type=int, default=100, help="earlier rounds in the release memory (--checks)")
    args = parser.parse_args()
    if args.runs < 1 and not args.checks:
        parser.error("--runs 0 measures nothing without --checks")
    report = compare(args) if args.runs > 0 else {}
    if args.checks:
        report["checks"] = checks(args, report.get("round_s"))
        report["load_average"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
