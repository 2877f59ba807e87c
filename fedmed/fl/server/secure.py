"""The server's side of a secure round: `ServerSession` driven through Flower messages. Only the
masked vectors and their unmasked sum ever exist here, never one site's update.

One send-and-receive per stage (the site's side is `fedmed.fl.site.masking`): setup (with the
round transcript every site checks and every signature of the round commits to,
`fedmed.fl.wire.transcript`) and share keys as `query.secagg`; the masked input as the round's
`train` message (its SharesForward rides with the global vector, the reply brings the MaskedInput
and the training metrics); consistency and unmask as `query.secagg`. A site that errs, stays
silent or sends a reply that does not verify at any stage is a dropout. `ServerSession` copes with
dropouts and aborts as soon as the sum could no longer be unmasked (`TooFewSurvivorsError`): that,
or fewer than `min_clients` updates in the sum, is `RoundFailed` and the last checkpoint stays as
it was.

The mean update is `unpack_weighted` of the sum: the sum S of the updates' part and C of the
weights' part give m = clip * S / C (weights by the transcript's rule: training samples / the
largest site's, or equal). Quantisation error per coordinate (n sites, no clipping): the decoded
parts are off by |e_S|, |e_C| < n / 2^p, so with W = sum_i w_i and m* the exact weighted mean

    |m - m*| <= (clip + |m*|) * n / (clip * W * 2^p - n)          (`mean_error_bound`)

e.g. 3 equal sites, p = 16, clip = 1, |m*| << 1: about 1.5e-5, unbiased. Coordinates of w_i * update
beyond +-clip are clipped on top of that (deltas after local training are far below the default
clip of 1). Against c sites colluding with the server, 2t - n > c must hold.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

import numpy as np
from flwr.app import RecordDict

from fedmed.config import SecureAggregationSection
from fedmed.fl.enrolment import Roster
from fedmed.fl.server.aggregation import Collected, Exchanged, RoundFailed, too_few
from fedmed.fl.server.exchange import Exchange
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import FLAT, Layout
from fedmed.fl.wire.messages import GLOBAL, SECAGG, SECAGG_KEY, SECAGG_ROUND, TRAIN, SiteHello, refusal_reason
from fedmed.fl.wire.replies import metric
from fedmed.fl.wire.secagg import StageMissingError, round_config, stage_bytes, stage_record
from fedmed.fl.wire.transcript import RoundTranscript, Weighting, vector_sha256
from secure_agg import ConfigError, ProtocolError, SecAggConfig, ServerSession, Stage, unpack_weighted

logger = logging.getLogger("fedmed.fl.server")


def mean_error_bound(config: SecAggConfig, *, weight_fraction: float, max_abs_mean: float) -> float:
    """Bound on |decoded mean - exact weighted mean| per coordinate (see the module docstring);
    `weight_fraction` is W = sum_i n_i / M, `max_abs_mean` the largest |coordinate| of the mean."""
    n, clip = config.num_clients, config.clip
    denominator = clip * weight_fraction * config.scale - n
    if denominator <= 0:
        return math.inf
    return (clip + max_abs_mean) * n / denominator


class SecureAggregator:
    """Secure rounds of one run: the plan's section and the roster the server was given."""

    def __init__(self, exchange: Exchange, section: SecureAggregationSection, roster: Roster, *, run_id: str,
                 min_clients: int):
        self.exchange, self.section, self.roster, self.min_clients = exchange, section, roster, min_clients
        self.run_id = run_id  # new for every run (a resumed one too)
        self.ids: dict[str, int] = {}  # admitted site -> client id

    def admit(self, sites: dict[str, SiteHello]) -> dict[str, SiteHello]:
        """The sites whose hello named an identity key of the roster; the others are left out."""
        admitted = {}
        for name, hello in sites.items():
            try:
                client_id = self.roster.id_of(bytes.fromhex(hello.identity))
            except ValueError:
                client_id = None
            if client_id is None:
                logger.warning("%s has no identity key in the roster; it is left out", name)
            else:
                self.ids[name], admitted[name] = client_id, hello
        return admitted

    def collect(self, round: int, chosen: dict[str, SiteHello], content: RecordDict, layout: Layout) -> Collected:
        """The training step of a secure round over the `chosen` sites (`content`: the train message)."""
        names = {self.ids[name]: name for name in chosen}
        try:
            config = round_config(self.section, num_clients=len(chosen), vector_length=layout.numel + 1)
            transcript = self.transcript(round, sorted(names), config, chosen, content)
            session = ServerSession(config, round_id=transcript.session_id, roster=self.roster.ids,
                                    participants=sorted(names))
        except ConfigError as error:
            raise RoundFailed(f"round {round} failed: secure aggregation cannot run over {len(chosen)} sites: "
                              f"{error}") from None
        setup = transcript.record()
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
                exchanged = train = self.exchange.send(TRAIN, contents, round=round, layout=layout)
            else:
                extra = {SECAGG_ROUND: setup} if stage is Stage.ADVERTISE_KEYS else {}
                contents = {names[c]: RecordDict({SECAGG_KEY: stage_record(r.to_bytes()), **extra})
                            for c, r in requests.items()}
                exchanged = self.exchange.send(SECAGG, contents, round=round, layout=layout)
                for name in contents:
                    moved[name]["received"] += exchanged.received.get(name, 0)
                    moved[name]["sent"] += exchanged.sent.get(name, 0)
            self._receive(session, stage, exchanged, failures)
            try:
                requests = session.advance()
            except ProtocolError as error:
                raise RoundFailed(f"round {round} failed: secure aggregation stopped at {stage.value}: {error}; "
                                  + "; ".join(f"{n}: {r}" for n, r in sorted(failures.items()))) from None
            seconds[stage.value] = time.perf_counter() - started
        return self._outcome(round, session, names, train, failures, moved, seconds, transcript.weighting)

    def transcript(self, round: int, participants: list[int], config: SecAggConfig, chosen: dict[str, SiteHello],
                   content: RecordDict) -> RoundTranscript:
        """The round as every participant must see it (`content`: the train message they will get)."""
        rule = self.section.weighting
        weighting = Weighting(rule=rule, max_weight=float(max(h.num_train or 1 for h in chosen.values()))
                              if rule == "samples" else 1.0)
        return RoundTranscript(run_id=self.run_id, round=round, roster=self.roster.digest,
                               participants=tuple(participants), config=config, weighting=weighting,
                               global_sha256=vector_sha256(content[GLOBAL][FLAT].numpy()),
                               instructions=Instructions.from_content(content))

    @staticmethod
    def _receive(session: ServerSession, stage: Stage, exchanged: Exchanged, failures: dict[str, str]) -> None:
        """Feed the stage's replies to the session; a refusal or a reply that does not verify is a dropout."""
        for name, reason in exchanged.failures.items():
            failures.setdefault(name, f"{stage.value}: {reason}")
        for name, reply in sorted(exchanged.replies.items()):
            refused = refusal_reason(reply)
            try:
                if refused is not None:
                    failures.setdefault(name, f"{stage.value}: refused: {refused}")
                else:
                    session.receive(stage_bytes(reply, f"{name}'s reply"))
                    continue
            except (ProtocolError, StageMissingError) as error:
                failures.setdefault(name, f"{stage.value}: its reply was refused: {error}")
            del exchanged.replies[name]  # the train replies that remain are those in the sum

    def _outcome(self, round: int, session: ServerSession, names: dict[int, str], train: Exchanged,
                 failures: dict[str, str], moved: dict, seconds: dict, weighting: Weighting) -> Collected:
        result, config, max_weight = session.result, session.config, weighting.max_weight
        survivors = [names[c] for c in result.survivors]
        if len(survivors) < self.min_clients:
            raise too_few(round, len(survivors), len(names), self.min_clients, failures, "in the secure sum")
        mean, weight = unpack_weighted(result.total, max_weight=max_weight, clip=config.clip)
        weight = float(weight)  # plain floats: the round record goes into checkpoints (torch weights_only)
        samples = {name: metric(train.replies[name], "num_examples") if name in train.replies else None
                   for name in survivors}
        expected = sum(weighting.weight_of(n) for n in samples.values() if n is not None)
        slack = len(names) * max_weight / (config.clip * config.scale)
        if None not in samples.values() and abs(weight - expected) > slack + 1e-6:
            logger.warning("round %d: the sites' reported training samples give a total weight of %.1f, their "
                           "masked weights sum to %.1f", round, expected, weight)
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
            "weighting": weighting.rule, "total_weight": weight, "error_bound": bound, "stage_s": seconds,
        }
        return Collected(mean, train, samples, failures, protocol_bytes=dict(moved), secure=details)
