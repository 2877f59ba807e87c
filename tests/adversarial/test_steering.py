"""Attacks 1 and 2 of issue 11: a malicious server steers what the other sites send (their weights,
their instructions, their starting model) so that the secure sum is one victim's update.

Each site's signatures commit to its round transcript, so a site told anything other than its
peers sees their keys fail to verify and refuses before it masks anything; a train message that
differs from the transcript the site signed is refused naming the field; every site weighs its
own update by the transcript's one rule; and a strict site refuses a learning rate outside its
bounds at the setup. Node 1 is the victim throughout; the sites are real (research, strict, or a
research policy that does not bound the learning rate).
"""

from __future__ import annotations

import pytest
from adversary import (
    DP_SGD,
    MaliciousServer,
    ScriptedRound,
    assert_nothing_released,
    assert_refused,
    estimate_error,
    make_sites,
    policy_file,
    reply_of,
)

from fedmed.fl.wire.messages import SECAGG, refusal_reason
from fedmed.fl.wire.transcript import RoundTranscript, Weighting, differences
from secure_agg import EncodingError, TooFewSurvivorsError
from secure_agg.messages import AdvertiseKeys, ConsistencyRequest, KeysBroadcast

VICTIM = 1
PEERS_SIGNED_ANOTHER_TRANSCRIPT = ("the signature on its public keys does not verify",
                                   "every signature of the round commits to the round transcript")
UNBOUNDED_LR = 'extends = "research"\nname = "research-any-lr"\n[training]\nlr = [1e-40, 1.0]\n'


def split_transcripts(server: MaliciousServer, views: dict[int, RoundTranscript]) -> dict[int, str | None]:
    """Set each site up with its own transcript and broadcast every site's signed keys to all; the
    sites' replies to the keys, as refusal reasons by node (each setup is self-consistent: it passes)."""
    adverts = server.send(SECAGG, {node: server.setup_content(views[node], node) for node in server.nodes})
    assert all(isinstance(reply_of(reply), AdvertiseKeys) for reply in adverts.values())
    keys = [reply_of(adverts[node]).keys for node in server.nodes]
    replies = server.send(SECAGG, {node: server.stage_content(
        KeysBroadcast(round_id=views[node].session_id, recipient=node, keys=keys)) for node in server.nodes})
    return {node: refusal_reason(reply) for node, reply in replies.items()}


# -- attack 1: per-site weights -----------------------------------------------------------------


def test_other_weights_for_the_other_sites_are_refused_before_any_masking(tmp_path):
    sites = make_sites(tmp_path, policy="research")
    server = MaliciousServer(sites)
    fair = server.transcript(run_id="weights")
    crushed = server.transcript(run_id="weights", weighting=Weighting(rule="samples", max_weight=1e300))
    assert differences(fair.model_dump(mode="json"), crushed.model_dump(mode="json")) == ["weighting.max_weight"]
    refusals = split_transcripts(server, {1: fair, 2: crushed, 3: crushed})
    assert_refused(sites, refusals, *PEERS_SIGNED_ANOTHER_TRANSCRIPT)
    assert_nothing_released(sites, server.nodes)


def test_one_transcript_weighs_every_site_by_the_same_rule(tmp_path, updates):
    """The old trick with one transcript for all: a max_weight of 1e300 scales the victim's weight as
    much as its peers' (the sum carries no weight at all); with the honest cap the server decodes the
    weights the sites gave themselves, and its best estimate of the victim's update, the mean, is
    far from it."""
    sites = make_sites(tmp_path, policy="research")
    server = MaliciousServer(sites)
    with pytest.raises(EncodingError, match="the summed weight is 0"):
        ScriptedRound(server, server.transcript(run_id="crushed", weighting=Weighting(max_weight=1e300))).finish()
    mean, weight = ScriptedRound(server, server.transcript(run_id="fair")).finish()
    assert weight == pytest.approx(sum(hello.num_train for hello in server.hellos.values()), abs=1e-3)
    error, correlation = estimate_error(mean, updates[sites.party(VICTIM)][-1])
    assert error > 0.25 and correlation < 0.95, (error, correlation)


# -- attack 2: per-site instructions and models ---------------------------------------------------


def test_other_instructions_or_another_model_for_the_other_sites_are_refused_before_any_masking(tmp_path):
    sites = make_sites(tmp_path, policy="research")
    server = MaliciousServer(sites)
    views = {1: server.transcript(run_id="models"), 2: server.transcript(run_id="models", training={"lr": 1e-7}),
             3: server.transcript(run_id="models", start=server.start * 0)}
    assert differences(views[1].model_dump(mode="json"), views[2].model_dump(mode="json")) == [
        "instructions.training.lr"]
    assert differences(views[1].model_dump(mode="json"), views[3].model_dump(mode="json")) == ["global_sha256"]
    refusals = split_transcripts(server, views)
    assert_refused(sites, refusals, *PEERS_SIGNED_ANOTHER_TRANSCRIPT)
    assert_nothing_released(sites, server.nodes)


def test_a_train_message_other_than_the_signed_transcript_is_refused_naming_the_field(tmp_path):
    """One transcript for all, then lr 1e-30 in one peer's train message and another global vector
    in the other's; the sites' policy does not bound the learning rate, so the transcript is all
    that stops it. The victim alone masks its update, and no sum of it is ever agreed to."""
    sites = make_sites(tmp_path, policy=policy_file(tmp_path, "any-lr", UNBOUNDED_LR))
    server = MaliciousServer(sites)
    scripted = ScriptedRound(server, server.transcript(run_id="train"))
    scripted.step()  # setup
    scripted.step()  # share keys
    replies = scripted.ask(train={2: {"instructions": server.instructions(training={"lr": 1e-30})},
                                  3: {"instructions": scripted.transcript.instructions, "start": server.start + 1e-3}})
    refusals = {node: refusal_reason(replies[node]) for node in (2, 3)}
    assert_refused(sites, {2: refusals[2]},
                   "not the round transcript this site signed: instructions.training.lr differ")
    assert_refused(sites, {3: refusals[3]}, "not the round transcript this site signed: global (the starting model) "
                                            "differ")
    assert_nothing_released(sites, (2, 3))
    assert sites.sent(VICTIM)[-1] == "update.weight"  # the victim masked its update: alone in the sum
    with pytest.raises(TooFewSurvivorsError):
        scripted.advance()
    forced = server.send(SECAGG, {VICTIM: server.stage_content(
        ConsistencyRequest(round_id=scripted.transcript.session_id, recipient=VICTIM, survivors=[VICTIM]))})
    assert_refused(sites, {VICTIM: refusal_reason(forced[VICTIM])}, "1 sites are in the secure sum; this site needs "
                                                                     "at least 2")
    assert all(sites.sums(node) == [] for node in server.nodes)


def test_a_strict_site_refuses_a_learning_rate_out_of_its_bounds_at_the_setup(tmp_path):
    sites = make_sites(tmp_path, policy="strict", samples=20, privacy=DP_SGD)
    server = MaliciousServer(sites)
    stalled = server.transcript(run_id="stalled", training={"lr": 1e-30})
    replies = server.setup(stalled)
    assert_refused(sites, {node: refusal_reason(reply) for node, reply in replies.items()},
                   "site policy 'strict' refuses round 1 (1 violation)", "training.lr: lr 1e-30 is outside this "
                                                                         "site's range [1e-06, 0.05]")
    assert_nothing_released(sites, server.nodes)
    assert all(sites.ledger_rounds(node) == [] for node in server.nodes)
    fair = server.transcript(run_id="fair")  # the same sites take the same round at the plan's lr
    replies = server.setup(fair)
    assert all(isinstance(reply_of(reply), AdvertiseKeys) for reply in replies.values())
