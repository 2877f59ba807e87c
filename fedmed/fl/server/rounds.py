"""The server's side of a run as one pass down, over a Flower `Grid`: `run_federation(grid, plan)`.

The same loop runs in the simulation engine, in a deployment and in-process in tests:

1. wait for the sites, greet them (`query.hello`; one that answers with an error is asked again):
   site names, sample counts, classes, model layout;
   the aggregator admits the sites that may take part (secure aggregation: those in the roster);
2. per round: choose the training sites (all but `--holdout`, or a `fraction_fit` of them), send
   them the global vector and the round's instructions, let the aggregator turn their replies into
   one aggregate update (`fedmed.fl.server.aggregation`: plain, or secure where only the sum is
   unmasked; a robust strategy's rule on the plain updates), move the global vector by the
   strategy's step (`fedmed.fl.server.strategy`, whose state every checkpoint keeps); a round
   with fewer than `min_clients` updates in the aggregate fails with every reason and leaves the
   last checkpoint as it was;
3. evaluate the new global model on every site's validation split (per class, per volume for
   volumes, with no prompt as at inference; box-trained models also with oracle boxes, apart);
   checkpoint it with the metrics. When the run ends, `final.pt` gets its model card.

Every message is logged in the server's audit log (`fedmed.fl.server.journal`) and counted in
bytes, per round and site in both directions.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid
from pydantic import ValidationError

from fedmed.fl.enrolment import EnrolmentError, Roster
from fedmed.fl.plan import RunPlan, derive_seed
from fedmed.fl.server.aggregation import Aggregator, Collected, FederationError, PlainAggregator, RoundFailed
from fedmed.fl.server.exchange import SITE_ERROR, Exchange, Exchanged
from fedmed.fl.server.journal import ServerJournal
from fedmed.fl.server.run_dir import RunDir
from fedmed.fl.server.secure import SecureAggregator
from fedmed.fl.server.strategy import StrategyStateError, make_strategy
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import Layout, pack
from fedmed.fl.wire.messages import CONFIG, EVALUATE, GLOBAL, HELLO, LAYOUT_KEY, SiteHello
from fedmed.fl.wire.replies import metric, per_class, privacy_unit
from fedmed.inference.card import write_model_card
from fedmed.models import build_model, trainable_state

logger = logging.getLogger("fedmed.fl.server")
HELLO_RETRIES = 3  # a node whose hello failed with an error is asked again this many times
HELLO_RETRY_S = 10.0  # seconds between the asks

__all__ = ["Federation", "FederationError", "RoundFailed", "round_instructions", "run_federation"]


def make_aggregator(plan: RunPlan, exchange: Exchange, *, run_id: str) -> Aggregator:
    """The plan's aggregator: secure (with the roster it names) or plain (with the strategy's rule)."""
    if not plan.secure_aggregation.enabled:
        return PlainAggregator(exchange, min_clients=plan.federation.min_clients,
                               weighting=plan.secure_aggregation.weighting, strategy=plan.strategy)
    if plan.strategy.individual_updates:  # the plan refuses this too; a hand-made plan must not get past here
        raise FederationError(f"strategy {plan.strategy.name!r} needs each site's update; secure aggregation "
                              "shows the server only their sum")
    if not plan.roster:
        raise FederationError("secure aggregation needs the roster of enrolled sites (the plan's `roster` file)")
    try:
        roster = Roster.load(plan.roster)
    except EnrolmentError as error:
        raise FederationError(str(error)) from None
    return SecureAggregator(exchange, plan.secure_aggregation, roster, run_id=f"{plan.name[:64]}/{run_id}",
                            min_clients=plan.federation.min_clients)


def mean_of(sites: dict[str, dict], key: str) -> float:
    """The mean of `key` over sites, weighted by their validation cases where they send them (a
    mean over every case, as a site's own is), skipping NaN; NaN for no site."""
    pairs = [(m[key], m.get("cases") or 1) for m in sites.values()
             if m.get(key) is not None and not math.isnan(m[key])]
    total = sum(weight for _, weight in pairs)
    return sum(value * weight for value, weight in pairs) / total if total else math.nan


def round_instructions(plan: RunPlan, round: int, *, num_classes: int, num_clients: int,
                       run_id: str) -> Instructions:
    """What the sites of `round` are told: the plan's sections as they are, and the round's numbers."""
    return Instructions(run_id=run_id, round=round, num_classes=num_classes, num_clients=num_clients,
                        federation=plan.federation,
                        model=plan.model, training=plan.training, strategy=plan.strategy,
                        secure_aggregation=plan.secure_aggregation,
                        privacy=plan.privacy)


class Federation:
    """One run of `plan` over `grid`; `run()` returns the final metrics record."""

    def __init__(self, grid: Grid, plan: RunPlan, journal: ServerJournal | None, *, resume: bool = False,
                 on_round: Callable[[dict], None] | None = None, poll_s: float = 1.0):
        self.grid, self.plan, self.journal, self.resume, self.on_round, self.poll_s = (
            grid, plan, journal, resume, on_round, poll_s)
        self.run_dir = RunDir(plan.out)
        self.run_id = journal.run_id if journal is not None else os.urandom(16).hex()
        self.exchange = Exchange(grid, journal, timeout=plan.round_timeout)
        self.aggregator = make_aggregator(plan, self.exchange, run_id=self.run_id)
        self.strategy = make_strategy(plan.strategy)
        self.sites: dict[str, SiteHello] = {}
        self.unheard: dict[str, str] = {}  # node -> why it did not say hello

    # ---- joining ----------------------------------------------------------------------------
    def _wait_for_nodes(self) -> list[int]:
        plan, deadline = self.plan, time.monotonic() + self.plan.join_timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= plan.num_clients or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_s)
        needed = max(plan.federation.min_clients, 1)
        if len(nodes) < needed:
            raise FederationError(f"only {len(nodes)} of {plan.num_clients} sites joined within "
                                  f"{plan.join_timeout:.0f} s; a round needs {needed}")
        if len(nodes) < plan.num_clients:
            logger.warning("%d of %d sites joined; going on without the others", len(nodes), plan.num_clients)
        return nodes

    def greet(self) -> tuple[dict[str, SiteHello], dict[str, dict[str, int]]]:
        """Ask every node who it is; returns the sites by name and the bytes of the hellos."""
        nodes = {f"node-{n}": n for n in self._wait_for_nodes()}
        exchanged = self._hello(nodes)
        sites, by_node, known = [], {}, {}
        for node, content in exchanged.replies.items():
            try:
                sites.append(SiteHello.from_content(content))
            except (KeyError, TypeError, ValidationError) as error:
                logger.warning("%s sent a malformed hello; it is left out: %s", node, error)
                continue
            by_node[sites[-1].name], known[node] = nodes[node], sites[-1].name
        names = [s.name for s in sites]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FederationError(f"several nodes call themselves {repeated}; every site needs its own name")
        classes = {(s.num_classes, s.class_names) for s in sites}
        if len(classes) > 1:
            raise FederationError("sites disagree on their classes: " + "; ".join(
                f"{s.name}: {s.num_classes} ({', '.join(s.class_names)})" for s in sites))
        self.exchange.nodes = by_node
        bytes_of = {way: {known.get(node, node): count for node, count in counts.items()}
                    for way, counts in (("received", exchanged.received), ("sent", exchanged.sent))}
        return {s.name: s for s in sorted(sites, key=lambda s: s.name)}, bytes_of

    def _hello(self, nodes: dict[str, int]) -> Exchanged:
        """Hello to every node; a node whose hello failed with an error (a site still finishing a message
        of an earlier run, say) is asked again, `HELLO_RETRIES` times at most, `HELLO_RETRY_S` apart. The
        nodes that never answered are kept in `self.unheard` with their reasons."""
        hello = round_instructions(self.plan, 0, num_classes=2, num_clients=len(nodes), run_id=self.run_id).record()
        exchanged = self.exchange.send(HELLO, {name: RecordDict({CONFIG: hello}) for name in nodes}, round=0,
                                       nodes=nodes)
        for _ in range(HELLO_RETRIES):
            errors = [node for node, reason in exchanged.failures.items() if reason.startswith(SITE_ERROR)]
            if not errors:
                break
            logger.warning("%s did not say hello (%s); asking again in %.0f s", ", ".join(errors),
                           "; ".join(exchanged.failures[node] for node in errors), HELLO_RETRY_S)
            time.sleep(HELLO_RETRY_S)
            again = self.exchange.send(HELLO, {name: RecordDict({CONFIG: hello}) for name in errors}, round=0,
                                       nodes=nodes)
            exchanged = exchanged.merged(again)
        self.unheard = dict(exchanged.failures)
        for node, reason in self.unheard.items():
            logger.warning("%s did not say hello: %s", node, reason)
        return exchanged

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        plan = self.plan
        last, saved, history = self.run_dir.start(plan, resume=self.resume)
        sites, setup_bytes = self.greet()
        if not sites:
            raise FederationError("no site answered hello")
        num_classes = next(iter(sites.values())).num_classes
        model = build_model(plan.model.build_config(num_classes=num_classes, seed=plan.federation.seed,
                                                    checkpoint=plan.checkpoint))
        tensors = trainable_state(model)
        layout = Layout.of(tensors)
        for site in [s for s in sites.values() if s.layout != layout.digest]:
            logger.warning("%s builds a different model (layout %s...); it is left out", site.name, site.layout[:12])
            del sites[site.name]
        self.sites = self.aggregator.admit(sites)
        trainers = self._trainers()
        vector = layout.flatten(saved if saved is not None else tensors)
        if last:
            logger.info("resuming %s after round %d", self.run_dir.root, last)
            try:
                self.strategy.load_state(self.run_dir.strategy_state(last), size=layout.numel)
            except StrategyStateError as error:
                raise FederationError(f"cannot resume {self.run_dir.round_path(last)}: {error}") from None
        for round in range(last + 1, plan.rounds + 1):
            started = time.perf_counter()
            try:
                vector, record = self.round(round, vector, trainers, num_classes, layout)
            except RoundFailed as error:
                self.run_dir.write_metrics(plan, history, status="failed", error=str(error))
                raise
            record["wall_s"] = round_wall = time.perf_counter() - started
            history.append(record)
            self.run_dir.save_round(round, layout.unflatten(vector), plan, history, strategy=self.strategy.state())
            if self.journal is not None:
                self.journal.rounds_completed += 1
            logger.info("round %d: mean Dice %.4f (%.1f s)", round, record["mean_dice"], round_wall)
            if self.on_round:
                self.on_round(record)
        self.run_dir.save_final(layout.unflatten(vector), plan, history, sites=sorted(self.sites),
                                setup_bytes=setup_bytes)
        self._write_card(num_classes)
        return self.run_dir.read_metrics()

    def _write_card(self, num_classes: int) -> None:
        """The model card beside `final.pt` (`fedmed.inference.card`): what predict needs of the data."""
        plan, sites = self.plan, sorted(self.sites.values(), key=lambda s: s.name)
        normalisations = {s.normalisation for s in sites}
        if len(normalisations) > 1:
            logger.warning("the sites normalise their data differently (%s); the model card records %s's",
                           ", ".join(f"{s.name}: {s.normalisation.source} {s.normalisation.modality}".strip()
                                     for s in sites), sites[0].name)
        config = plan.model.build_config(num_classes=num_classes, seed=plan.federation.seed, checkpoint=plan.checkpoint)
        write_model_card(self.run_dir.root, config, class_names=sites[0].class_names,
                         normalisation=sites[0].normalisation, checkpoint_sha256=plan.model.checkpoint_sha256)

    def _trainers(self) -> list[str]:
        plan, names = self.plan, sorted(self.sites)
        if plan.holdout is not None and plan.holdout not in names:
            raise FederationError(f"holdout site {plan.holdout!r} is not among the sites {names}")
        trainers = [n for n in names if n != plan.holdout]
        if len(trainers) < plan.federation.min_clients:
            unheard = "".join(f"; {node} did not say hello: {reason}" for node, reason in self.unheard.items())
            raise FederationError(f"{len(trainers)} sites can train ({', '.join(trainers) or 'none'}) but a round "
                                  f"needs {plan.federation.min_clients} (min_clients){unheard}")
        return trainers

    def _choose(self, trainers: list[str], round: int) -> list[str]:
        federation = self.plan.federation
        count = min(len(trainers), max(federation.min_clients, math.ceil(federation.fraction_fit * len(trainers))))
        if count == len(trainers):
            return trainers
        rng = np.random.default_rng(derive_seed(federation.seed, round, "sample"))
        return sorted(rng.choice(trainers, size=count, replace=False).tolist())

    @staticmethod
    def _content(instructions: Instructions, vector: np.ndarray, layout: Layout) -> RecordDict:
        return RecordDict({GLOBAL: pack(vector), LAYOUT_KEY: layout.record(), CONFIG: instructions.record()})

    def round(self, round: int, vector: np.ndarray, trainers: list[str], num_classes: int,
              layout: Layout) -> tuple[np.ndarray, dict]:
        """Train, aggregate and evaluate one round; returns the new global vector and the round's record."""
        chosen = self._choose(trainers, round)
        instructions = round_instructions(self.plan, round, num_classes=num_classes, num_clients=len(chosen),
                                          run_id=self.run_id)
        collected = self.aggregator.collect(round, {name: self.sites[name] for name in chosen},
                                            self._content(instructions, vector, layout), layout)
        vector = self.strategy.step(vector, collected.mean, round=round)
        content = self._content(instructions, vector, layout)
        evaluation = self.exchange.send(EVALUATE, {name: content for name in self.sites}, round=round, layout=layout)
        return vector, self._record(round, collected, evaluation)

    def _record(self, round: int, collected: Collected, evaluation: Exchanged) -> dict:
        train, samples, failures = collected.train, collected.samples, collected.failures
        sites = {}
        for name in self.sites:
            answer, trained = evaluation.replies.get(name, RecordDict()), train.replies.get(name, RecordDict())
            protocol = collected.protocol_bytes.get(name, {})
            bytes_of = {"train_received": train.received.get(name, 0), "train_sent": train.sent.get(name, 0),
                        "evaluate_received": evaluation.received.get(name, 0),
                        "evaluate_sent": evaluation.sent.get(name, 0)}
            if collected.secure is not None:
                bytes_of.update(secagg_received=protocol.get("received", 0), secagg_sent=protocol.get("sent", 0))
            sites[name] = {
                "dice": metric(answer, "dice", math.nan), "prompt": "none", "dice_per_class": per_class(answer),
                "dice_oracle_boxes": metric(answer, "dice_oracle_boxes"), "loss": metric(answer, "loss"),
                "cases": metric(answer, "cases"), "samples": metric(answer, "num_examples"),
                "train_loss": metric(trained, "train_loss") if name in samples else None,
                "train_samples": samples.get(name),
                "epsilon": metric(trained, "epsilon"), "delta": metric(trained, "delta"),
                "privacy_unit": privacy_unit(trained),
                "status": ("trained" if name in samples else "failed" if name in failures
                           else "holdout" if name == self.plan.holdout else "not chosen"),
                "error": failures.get(name) or evaluation.failures.get(name),
                "bytes_received": sum(v for k, v in bytes_of.items() if k.endswith("_received")),
                "bytes_sent": sum(v for k, v in bytes_of.items() if k.endswith("_sent")),
                "bytes": bytes_of,
            }
        training = {n: m for n, m in sites.items() if n != self.plan.holdout and n in evaluation.replies}
        record = {
            "round": round,
            "mean_dice": mean_of(training, "dice"),
            "trained": sorted(samples),
            "failed": dict(sorted(failures.items())),
            "sites": sites,
            "secure_aggregation": collected.secure is not None,
        }
        oracle = {n: m for n, m in training.items() if m["dice_oracle_boxes"] is not None}
        if oracle:
            record["mean_dice_oracle_boxes"] = mean_of(oracle, "dice_oracle_boxes")
        if collected.secure is not None:
            record["secagg"] = collected.secure
        if self.plan.holdout is not None:
            record["holdout_dice"] = sites[self.plan.holdout]["dice"]
        return record


def run_federation(grid: Grid, plan: RunPlan, *, resume: bool = False,
                   on_round: Callable[[dict], None] | None = None) -> dict:
    """Run `plan` over `grid` (see the module docstring), logging every transmitted tensor in the
    server's audit log; returns the final metrics record."""
    with ServerJournal.open(plan, resume=resume) as journal:
        return Federation(grid, plan, journal, resume=resume, on_round=on_round).run()
