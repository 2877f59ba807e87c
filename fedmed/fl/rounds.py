"""The server's side of a run as one plain function over a Flower `Grid`: `run_federation(grid, plan)`.

The same loop runs in the simulation engine, in a deployment and in-process in tests:

1. wait for the sites, greet them (`query.hello`): site names, sample counts, classes, model layout;
2. per round: send the global vector to the training sites (all but `--holdout`), check every reply
   (`fedmed.fl.validate`), average the accepted updates weighted by training samples, move the
   global vector; a round with fewer than `min_clients` accepted updates fails with every reason
   and leaves the last checkpoint as it was. With secure aggregation (the plan's section) the
   sites' updates are masked and only their weighted sum is unmasked (`fedmed.fl.secure_server`);
3. evaluate the new global model on every site's validation split; checkpoint it with the metrics.

Bytes are the serialized size of each message, counted per round and site in both directions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedmed.fl.aggregate import apply_update, weighted_mean
from fedmed.fl.plan import RunPlan, derive_seed
from fedmed.fl.protocol import (CONFIG, EVALUATE, GLOBAL, HELLO, LAYOUT_KEY, METRICS, SITE, TRAIN, Instructions,
                                refusal_reason)
from fedmed.fl.serde import Layout, message_bytes, pack
from fedmed.fl.site import model_config
from fedmed.fl.state import RunDir
from fedmed.fl.validate import UpdateRejected, check_update
from fedmed.models import build_model, trainable_state
from fedmed.train.centralized import mean_over_sites

logger = logging.getLogger("fedmed.fl.server")


class FederationError(RuntimeError):
    """The federation cannot start or go on (too few sites, sites that disagree, a failed round)."""


class RoundFailed(FederationError):
    """Fewer than `min_clients` accepted updates in a round; the last checkpoint is left intact."""


@dataclass(frozen=True)
class SiteInfo:
    node_id: int
    name: str
    num_train: int
    num_val: int
    num_classes: int
    layout: str
    identity: str = ""  # Ed25519 public key (hex) for secure aggregation, if the site has one


@dataclass
class Exchange:
    """Replies of one send-and-receive, by site, with the bytes that moved and what went wrong."""

    replies: dict[str, RecordDict]
    failures: dict[str, str]
    received: dict[str, int]  # bytes a site received (server -> site)
    sent: dict[str, int]  # bytes a site sent (site -> server)


@dataclass
class TrainOutcome:
    """The training step of a round: the mean update and what the round record needs."""

    mean: np.ndarray  # sample-weighted mean update, float32
    train: Exchange  # the train messages (replies with metrics, bytes)
    samples: dict[str, int]  # sites whose update is in the mean -> training samples
    failures: dict[str, str]  # chosen sites whose update is not -> why
    details: dict = field(default_factory=dict)  # secure aggregation: survivors, error bound, bytes, ...


class Federation:
    """One run of `plan` over `grid`; `run()` returns the final metrics record."""

    def __init__(self, grid: Grid, plan: RunPlan, *, resume: bool = False,
                 on_round: Callable[[dict], None] | None = None, poll_s: float = 1.0):
        self.grid, self.plan, self.resume, self.on_round, self.poll_s = grid, plan, resume, on_round, poll_s
        self.run_dir = RunDir(plan.out)
        self.sites: dict[str, SiteInfo] = {}
        from fedmed.fl.secure_server import SecureAggregation  # it builds on this module

        self.secure = SecureAggregation.from_plan(plan)

    # ---- talking to sites -------------------------------------------------------------------
    def exchange(self, message_type: str, contents: dict[str, RecordDict], round: int,
                 nodes: dict[str, int] | None = None) -> Exchange:
        """Send `contents[site]` to each site (node ids from `nodes`, else the greeted sites) and collect."""
        nodes = nodes if nodes is not None else {name: info.node_id for name, info in self.sites.items()}
        ttl = self.plan.round_timeout * 2 if self.plan.round_timeout else None
        messages, by_node = [], {}
        received: dict[str, int] = {}
        for name, content in contents.items():
            node = nodes[name]
            message = Message(content, dst_node_id=node, message_type=message_type, group_id=str(round), ttl=ttl)
            received[name] = message_bytes(message)
            messages.append(message)
            by_node[node] = name
        replies, failures, sent = {}, {}, {}
        for reply in self.grid.send_and_receive(messages, timeout=self.plan.round_timeout):
            name = by_node.get(reply.metadata.src_node_id)
            if name is None:
                continue
            sent[name] = message_bytes(reply)
            if reply.has_error():
                failures[name] = f"site error: {reply.error.reason}"
            else:
                replies[name] = reply.content
        for name in contents:
            if name not in replies and name not in failures:
                failures[name] = f"no answer within {self.plan.round_timeout} s"
        return Exchange(replies, failures, received, sent)

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.plan.join_timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.plan.num_clients or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_s)
        if len(nodes) < max(self.plan.min_clients, 1):
            raise FederationError(f"only {len(nodes)} of {self.plan.num_clients} sites joined within "
                                  f"{self.plan.join_timeout:.0f} s; a round needs {self.plan.min_clients}")
        if len(nodes) < self.plan.num_clients:
            logger.warning("%d of %d sites joined; going on without the others", len(nodes), self.plan.num_clients)
        return nodes

    def greet(self) -> None:
        """Ask every node who it is; keep the sites whose model layout is the server's."""
        nodes = self._wait_for_nodes()
        hello = Instructions.for_round(self.plan, 0, num_classes=2).record()
        exchange = self.exchange(HELLO, {str(n): RecordDict({CONFIG: hello}) for n in nodes}, round=0,
                                 nodes={str(n): n for n in nodes})
        for node, reason in exchange.failures.items():
            logger.warning("node %s did not say hello: %s", node, reason)
        sites = []
        for node, content in exchange.replies.items():
            record = content[SITE]
            sites.append(SiteInfo(int(node), str(record["name"]), int(record["num-train"]), int(record["num-val"]),
                                  int(record["num-classes"]), str(record["layout"]), str(record.get("identity", ""))))
        names = [s.name for s in sites]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FederationError(f"several nodes call themselves {repeated}; every site needs its own name")
        classes = {s.num_classes for s in sites}
        if len(classes) > 1:
            raise FederationError("sites disagree on the number of classes: "
                                  + ", ".join(f"{s.name}: {s.num_classes}" for s in sites))
        self.sites = {s.name: s for s in sorted(sites, key=lambda s: s.name)}
        self.setup_bytes = {"received": exchange.received, "sent": exchange.sent}

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        plan = self.plan
        last, saved, history = self.run_dir.start(plan, resume=self.resume)
        self.greet()
        if not self.sites:
            raise FederationError("no site answered hello")
        num_classes = next(iter(self.sites.values())).num_classes
        model = build_model(model_config(plan.model, num_classes=num_classes, seed=plan.seed,
                                         checkpoint=plan.model.checkpoint))
        tensors = trainable_state(model)
        self.layout = Layout.of(tensors)
        for site in [s for s in self.sites.values() if s.layout != self.layout.digest]:
            logger.warning("%s builds a different model (layout %s...); it is left out", site.name, site.layout[:12])
            del self.sites[site.name]
        if self.secure is not None:
            self.secure.admit(self.sites)
        trainers = self._trainers()
        vector = self.layout.flatten(saved if saved is not None else tensors)
        if last:
            logger.info("resuming %s after round %d", self.run_dir.root, last)
        for round in range(last + 1, plan.rounds + 1):
            started = time.perf_counter()
            try:
                vector, record = self.round(round, vector, trainers, num_classes)
            except RoundFailed as error:
                self.run_dir.write_metrics(plan, history, status="failed", error=str(error))
                raise
            record["wall_s"] = round_wall = time.perf_counter() - started
            history.append(record)
            self.run_dir.save_round(round, self.layout.unflatten(vector), plan, history)
            logger.info("round %d: mean Dice %.4f (%.1f s)", round, record["mean_dice"], round_wall)
            if self.on_round:
                self.on_round(record)
        final = {"sites": sorted(self.sites), "setup_bytes": self.setup_bytes}
        self.run_dir.save_final(self.layout.unflatten(vector), plan, history, **final)
        return self.run_dir.read_metrics()

    def _trainers(self) -> list[str]:
        plan, names = self.plan, sorted(self.sites)
        if plan.holdout is not None and plan.holdout not in names:
            raise FederationError(f"holdout site {plan.holdout!r} is not among the sites {names}")
        trainers = [n for n in names if n != plan.holdout]
        if len(trainers) < plan.min_clients:
            raise FederationError(f"{len(trainers)} sites can train ({', '.join(trainers) or 'none'}) but a round "
                                  f"needs {plan.min_clients} (min_clients)")
        return trainers

    def _choose(self, trainers: list[str], round: int) -> list[str]:
        count = min(len(trainers), max(self.plan.min_clients, math.ceil(self.plan.fraction_fit * len(trainers))))
        if count == len(trainers):
            return trainers
        rng = np.random.default_rng(derive_seed(self.plan.seed, round, "sample"))
        return sorted(rng.choice(trainers, size=count, replace=False).tolist())

    def _content(self, instructions: Instructions, vector: np.ndarray) -> RecordDict:
        return RecordDict({GLOBAL: pack(vector), LAYOUT_KEY: ConfigRecord({"digest": self.layout.digest}),
                           CONFIG: instructions.record()})

    def round(self, round: int, vector: np.ndarray, trainers: list[str], num_classes: int) -> tuple[np.ndarray, dict]:
        """Train, aggregate and evaluate one round; returns the new global vector and the round's record."""
        plan = self.plan
        chosen = self._choose(trainers, round)
        instructions = Instructions.for_round(plan, round, num_classes=num_classes, num_clients=len(chosen))
        content = self._content(instructions, vector)
        if self.secure is not None:
            outcome = self.secure.train(self, round, chosen, content)
        else:
            outcome = self._plain_train(round, chosen, content)
        vector = apply_update(vector, outcome.mean)
        evaluation = self.exchange(EVALUATE, {name: self._content(instructions, vector) for name in self.sites}, round)
        record = self._record(round, chosen, outcome.train, outcome.samples, outcome.failures, evaluation)
        if self.secure is not None:
            self.secure.annotate(record, outcome)
        else:
            record["secure_aggregation"] = False
        return vector, record

    def _plain_train(self, round: int, chosen: list[str], content: RecordDict) -> TrainOutcome:
        """Send `content` to the chosen sites, check their updates, average the accepted ones."""
        plan = self.plan
        train = self.exchange(TRAIN, {name: content for name in chosen}, round)
        updates, failures = {}, dict(train.failures)
        for name, reply in sorted(train.replies.items()):
            refused = refusal_reason(reply)
            if refused is not None:
                failures[name] = f"refused: {refused}"
                continue
            try:
                updates[name] = check_update(reply, self.layout, site=name)
            except UpdateRejected as error:
                failures[name] = "rejected: " + "; ".join(error.reasons)
        for name, reason in sorted(failures.items()):
            logger.warning("round %d: %s left out: %s", round, name, reason)
        if len(updates) < plan.min_clients:
            raise RoundFailed(
                f"round {round} failed: {len(updates)} of {len(chosen)} sites sent a usable update, "
                f"{plan.min_clients} needed; " + "; ".join(f"{n}: {r}" for n, r in sorted(failures.items()))
            )
        samples = {name: weight for name, (_, weight) in updates.items()}
        return TrainOutcome(weighted_mean(updates), train, samples, failures)

    def _record(self, round: int, chosen: list[str], train: Exchange, samples: dict[str, int], failures: dict,
                evaluation: Exchange) -> dict:
        sites = {}
        for name in self.sites:
            metrics = dict(evaluation.replies[name][METRICS]) if name in evaluation.replies else {}
            train_metrics = dict(train.replies[name][METRICS]) if name in train.replies else {}
            sites[name] = {
                "dice": metrics.get("dice", math.nan), "iou": metrics.get("iou", math.nan),
                "hd95": metrics.get("hd95", math.nan), "loss": metrics.get("loss", math.nan),
                "samples": int(metrics.get("num-examples", 0)),
                "train_loss": train_metrics.get("train-loss") if name in samples else None,
                "train_samples": samples.get(name, 0),
                "epsilon": train_metrics.get("epsilon"), "delta": train_metrics.get("delta"),
                "status": ("trained" if name in samples else "failed" if name in failures
                           else "holdout" if name == self.plan.holdout else "not chosen"),
                "error": failures.get(name) or evaluation.failures.get(name),
                "bytes_received": train.received.get(name, 0) + evaluation.received.get(name, 0),
                "bytes_sent": train.sent.get(name, 0) + evaluation.sent.get(name, 0),
                "bytes": {"train_received": train.received.get(name, 0), "train_sent": train.sent.get(name, 0),
                          "evaluate_received": evaluation.received.get(name, 0),
                          "evaluate_sent": evaluation.sent.get(name, 0)},
            }
        training = {n: m for n, m in sites.items() if n != self.plan.holdout and m["samples"]}
        record = {
            "round": round,
            "mean_dice": mean_over_sites(training, "dice") if training else math.nan,
            "mean_iou": mean_over_sites(training, "iou") if training else math.nan,
            "trained": sorted(samples),
            "failed": dict(sorted(failures.items())),
            "sites": sites,
        }
        if self.plan.holdout is not None:
            record["holdout_dice"] = sites[self.plan.holdout]["dice"]
        return record


def run_federation(grid: Grid, plan: RunPlan, *, resume: bool = False,
                   on_round: Callable[[dict], None] | None = None) -> dict:
    """Run `plan` over `grid` (see the module docstring), logging every transmitted tensor in the
    server's audit log (`fedmed.fl.server_audit`); returns the final metrics record."""
    from fedmed.fl.server_audit import audited_federation  # it builds on this module

    return audited_federation(grid, plan, resume=resume, on_round=on_round)

