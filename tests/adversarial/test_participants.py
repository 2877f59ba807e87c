"""Attack 4 of issue 11: fewer participants than a site's policy allows. With two sites in a round,
the server and the one other site recover the victim's update; an honest server that ends a round
with two survivors lets each learn the other's update from the next global model.

A strict site (min_clients 3) judges the participants of the signed transcript, not the server's
word: a setup of 2 participants is refused before any key is advertised, and a setup whose
instructions claim 3 sites while it names 2 is inconsistent. Before it signs the survivors or
reveals a share, the site counts them again: with 2 in the sum, it does neither. (Strict sites
need 16 training pictures: 20 a site here.)
"""

from __future__ import annotations

import pytest
from adversary import DP_SGD, MaliciousServer, assert_nothing_released, assert_refused, make_sites

from fedmed.fl.server.rounds import RoundFailed, run_federation
from fedmed.fl.wire.messages import SECAGG, TRAIN, refusal_reason
from fedmed.fl.wire.secagg import stage_bytes
from secure_agg import parse


def strict_sites(tmp_path):
    return make_sites(tmp_path, policy="strict", samples=20, privacy=DP_SGD)


def test_a_strict_site_refuses_a_setup_of_two_participants(tmp_path):
    sites = strict_sites(tmp_path)
    server = MaliciousServer(sites)
    pair = server.transcript(run_id="pair", participants=(1, 2))
    refusals = {node: refusal_reason(reply) for node, reply in server.setup(pair).items()}
    assert_refused(sites, refusals, "secure_aggregation.min_clients: 2 client(s) in the round; this site needs at "
                                    "least 3")
    claimed = server.transcript(run_id="claimed", participants=(1, 2), instructions=server.instructions(num_clients=3))
    refusals = {node: refusal_reason(reply) for node, reply in server.setup(claimed).items()}
    assert_refused(sites, refusals, "the secure-aggregation setup is inconsistent: the instructions announce 3 "
                                    "sites, the transcript names 2 participants")
    assert_nothing_released(sites, server.nodes)
    assert all(sites.ledger_rounds(node) == [] for node in server.nodes)


def test_two_survivors_get_no_signature_and_no_share_from_strict_sites(tmp_path):
    """The real server loop, honest: the third site goes down at its train message, so the masked
    inputs of two sites are in the sum. They refuse to sign it, the round fails, no share leaves."""
    sites = strict_sites(tmp_path)
    secagg_replies = []

    def intercept(node, message, deliver):
        if node == 3 and message.metadata.message_type == TRAIN:
            raise RuntimeError("site 3 went down before its masked input")
        reply = deliver(message)
        if message.metadata.message_type == SECAGG:
            secagg_replies.append((node, reply.content))
        return reply

    sites.grid.intercept = intercept
    with pytest.raises(RoundFailed, match="round 1 failed: secure aggregation stopped at consistency"):
        run_federation(sites.grid, sites.plan)
    for node in (1, 2):
        assert_refused(sites, {node: sites.refusals(node)[-1]}, "2 sites are in the secure sum; this site needs at "
                                                                "least 3 (its policy's secure_aggregation.min_clients)")
        assert sites.sent(node)[-1] == "update.weight"  # its masked input left (and its DP round is charged)
        assert sites.sums(node) == [] and len(sites.ledger_rounds(node)) == 1
    stages = [type(parse(stage_bytes(content, "reply"))).__name__ for _, content in secagg_replies
              if refusal_reason(content) is None]
    assert stages.count("AdvertiseKeys") == 3 and stages.count("ShareKeys") == 3
    assert "ConsistencySignature" not in stages and "UnmaskResponse" not in stages
