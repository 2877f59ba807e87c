"""The server's side of a secure round: `ServerSession` driven through Flower messages. Only the
masked vectors and their unmasked sum ever exist here, never one site's update.

    secure = SecureAggregation.from_plan(plan)          # None when the plan's section is off
    secure.admit(federation.sites)                      # sites not in the roster are left out
    outcome = secure.train(federation, round, chosen, content)      # a `TrainOutcome`

One send-and-receive per stage (the site's side is `fedmed.fl.secure_client`): setup and share
keys as `query.secagg`; the masked input as the round's `train` message (its SharesForward rides
with the global vector, the reply brings the MaskedInput and the training metrics); consistency
and unmask as `query.secagg`. A site that errs, stays silent or sends a reply that does not verify
at any stage is a dropout. `ServerSession` copes with dropouts and aborts as soon as the sum could
no longer be unmasked (`TooFewSurvivorsError`): that, or fewer than `min_clients` updates in the
sum, is `RoundFailed` and the last checkpoint stays as it was. The mean update is
`unpack_weighted` of the sum (weights = training samples / the largest site's, see
`fedmed.fl.secure_config`), within `mean_error_bound` of the plain weighted mean.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedmed.config import SecureAggregationSection
from fedmed.fl.enrolment import EnrolmentError, Roster
from fedmed.fl.plan import RunPlan
from fedmed.fl.protocol import METRICS, SECAGG, SECAGG_KEY, SECAGG_ROUND, TRAIN, refusal_reason
from fedmed.fl.rounds import Federation, FederationError, RoundFailed, SiteInfo, TrainOutcome
from fedmed.fl.secure_client import SecureRoundRefused, stage_bytes, stage_record
from fedmed.fl.secure_config import mean_error_bound, round_config, secure_section
from secure_agg import ConfigError, ProtocolError, ServerSession, Stage, unpack_weighted

logger = logging.getLogger("fedmed.fl.server")


def _samples(reply: RecordDict | None) -> int:
    """The training samples a site reports in its train reply (0 if it reports none)."""
    metrics = reply.get(METRICS) if isinstance(reply, RecordDict) else None
    value = metrics.get("num-examples") if metrics is not None else None
    return int(value) if isinstance(value, (int, float)) and value >= 0 else 0


class SecureAggregation:
    """Secure rounds for one run: the plan's section and the roster the server was given."""

    def __init__(self, section: SecureAggregationSection, roster: Roster):
        self.section, self.roster = section, roster
        self.ids: dict[str, int] = {}  # admitted site -> client id

    @classmethod
    def from_plan(cls, plan: RunPlan) -> SecureAggregation | None:
        section = secure_section(plan.secure_aggregation)
        if section is None:
            return None
        if plan.min_clients < 2:
            raise FederationError("secure aggregation needs min_clients >= 2 (a sum of one update is no secret)")
        if not plan.roster:
            raise FederationError("secure aggregation needs the roster of enrolled sites (the plan's `roster` file)")
        try:
            return cls(section, Roster.load(plan.roster))
        except EnrolmentError as error:
            raise FederationError(str(error)) from None

    def admit(self, sites: dict[str, SiteInfo]) -> None:
        """Keep the sites whose hello named an identity key of the roster; leave out the others."""
        for name, info in list(sites.items()):
            try:
                client_id = self.roster.id_of(bytes.fromhex(info.identity))
            except ValueError:
                client_id = None
            if client_id is None:
                logger.warning("%s has no identity key in the roster; it is left out", name)
                del sites[name]
            else:
                self.ids[name] = client_id

    def train(self, federation: Federation, round: int, chosen: list[str], content: RecordDict) -> TrainOutcome:
        """The training step of a secure round over the `chosen` sites (`content`: the train message)."""
        plan, names = federation.plan, {self.ids[name]: name for name in chosen}
        max_weight = max(federation.sites[name].num_train for name in chosen)
        try:
            config = round_config(self.section, num_clients=len(chosen), vector_length=federation.layout.numel + 1)
            session = ServerSession(config, round_id=f"{plan.name[:100]}/round-{round}/{os.urandom(8).hex()}",
                                    roster=self.roster.ids, participants=sorted(names))
        except ConfigError as error:
            raise RoundFailed(f"round {round} failed: secure aggregation cannot run over {len(chosen)} sites: "
                              f"{error}") from None
        setup = ConfigRecord({"round": round, "max-weight": float(max_weight), "roster": self.roster.digest})
        failures: dict[str, str] = {}
        moved: dict[str, dict[str, int]] = defaultdict(lambda: {"received": 0, "sent": 0})
        seconds: dict[str, float] = {}
        train = None
        requests = session.start()
        while not session.done:
            stage, started = session.stage, time.perf_counter()
            if stage is Stage.MASKED_INPUT:
                contents = {names[c]: RecordDict({**content, SECAGG_KEY: stage_record(r.to_bytes())})
                            for c, r in requests.items()}
                exchange = train = federation.exchange(TRAIN, contents, round)
            else:
                extra = {SECAGG_ROUND: setup} if stage is Stage.ADVERTISE_KEYS else {}
                contents = {names[c]: RecordDict({SECAGG_KEY: stage_record(r.to_bytes()), **extra})
                            for c, r in requests.items()}
                exchange = federation.exchange(SECAGG, contents, round)
                for name in contents:
                    moved[name]["received"] += exchange.received.get(name, 0)
                    moved[name]["sent"] += exchange.sent.get(name, 0)
            for name, reason in exchange.failures.items():
                failures.setdefault(name, f"{stage.value}: {reason}")
            for name, reply in sorted(exchange.replies.items()):
                refused = refusal_reason(reply)
                try:
                    if refused is not None:
                        raise SecureRoundRefused(refused)
                    session.receive(stage_bytes(reply, f"{name}'s reply"))
                except (ProtocolError, SecureRoundRefused) as error:
                    failures.setdefault(name, f"{stage.value}: " + (f"refused: {refused}" if refused is not None
                                                                     else f"its reply was refused: {error}"))
                    del exchange.replies[name]  # the train replies that remain are those in the sum
            try:
                requests = session.advance()
            except ProtocolError as error:
                raise RoundFailed(f"round {round} failed: secure aggregation stopped at {stage.value}: {error}; "
                                  + "; ".join(f"{n}: {r}" for n, r in sorted(failures.items()))) from None
            seconds[stage.value] = time.perf_counter() - started
        return self._outcome(federation, round, session, names, train, failures, moved, seconds, max_weight)

    def _outcome(self, federation: Federation, round: int, session: ServerSession, names: dict[int, str], train,
                 failures: dict[str, str], moved: dict, seconds: dict, max_weight: int) -> TrainOutcome:
        result, config = session.result, session.config
        survivors = [names[c] for c in result.survivors]
        if len(survivors) < federation.plan.min_clients:
            raise RoundFailed(f"round {round} failed: {len(survivors)} of {len(names)} sites in the secure sum, "
                              f"{federation.plan.min_clients} needed; "
                              + "; ".join(f"{n}: {r}" for n, r in sorted(failures.items())))
        mean, weight = unpack_weighted(result.total, max_weight=max_weight, clip=config.clip)
        weight = float(weight)  # plain floats: the round record goes into checkpoints (torch weights_only)
        samples = {name: _samples(train.replies.get(name)) for name in survivors}
        slack = len(names) * max_weight / (config.clip * config.scale)
        if abs(weight - sum(samples.values())) > slack + 1e-6:
            logger.warning("round %d: the sites report %d training samples, their masked weights sum to %.1f",
                           round, sum(samples.values()), weight)
        late = {name: failures.pop(name) for name in survivors if name in failures}
        for name, reason in sorted(failures.items()):
            logger.warning("round %d: %s left out: %s", round, name, reason)
        for name, reason in sorted(late.items()):
            logger.warning("round %d: %s dropped out after sending its masked update (%s); it is in the sum",
                           round, name, reason)
        mean = mean.astype(np.float32)
        bound = mean_error_bound(config, weight_fraction=weight / max_weight,
                                 max_abs_mean=float(np.abs(mean).max(initial=0.0)))
        details = {
            "round_id": session.round_id, "participants": sorted(names.values()), "survivors": survivors,
            "late_dropouts": late, "threshold": config.threshold, "clip": config.clip,
            "precision_bits": config.precision_bits, "modulus_bits": config.modulus_bits, "graph": config.graph,
            "total_weight": weight, "error_bound": bound, "stage_s": seconds, "bytes": dict(moved),
        }
        return TrainOutcome(mean, train, samples, failures, details)

    @staticmethod
    def annotate(record: dict, outcome: TrainOutcome) -> None:
        """Add the round's secure-aggregation details and the bytes of its `query.secagg` messages."""
        details = dict(outcome.details)
        moved = details.pop("bytes")
        for name, site in record["sites"].items():
            received, sent = moved.get(name, {}).get("received", 0), moved.get(name, {}).get("sent", 0)
            site["bytes"].update(secagg_received=received, secagg_sent=sent)
            site["bytes_received"] += received
            site["bytes_sent"] += sent
        record["secure_aggregation"] = True
        record["secagg"] = details
