"""A malicious server, malicious clients and a hostile network: every attack meets a named error."""

from __future__ import annotations

import os

import numpy as np
import pytest
from secagg_harness import Round

from secure_agg import (
    ClientSession,
    ConfigError,
    ConsistencyError,
    DoubleRevealError,
    ForgedMessageError,
    MalformedMessageError,
    Progress,
    ReconstructionError,
    ReplayError,
    SecAggConfig,
    ServerSession,
    Stage,
    StageError,
    TooFewSurvivorsError,
    crypto,
)
from secure_agg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    MaskedInput,
    ShareItem,
    SignedKeys,
    SurvivorSignature,
    UnmaskRequest,
    keys_payload,
)


def config(n=5, t=3, length=8, **kw):
    return SecAggConfig(num_clients=n, threshold=t, vector_length=length, clip=4.0, precision_bits=16, **kw)


def resign(r: Round, msg, **changes):
    """``msg`` with ``changes``, signed again by its sender (a malicious but authentic client)."""
    return msg.model_copy(update={**changes, "signature": b""}).signed(r.identities[msg.sender].private)


def assert_round_still_exact(r: Round):
    assert np.array_equal(r.finish().total, r.expected_total(r.ids))


# -- replayed and reordered messages -----------------------------------------------------------


def test_server_refuses_a_replayed_reply_and_carries_on():
    r = Round(config())
    wire = r.reply(0).to_bytes()
    r.server.receive(wire)
    with pytest.raises(ReplayError, match="already received"):
        r.server.receive(wire)
    for c in range(1, 5):
        r.server.receive(r.reply(c).to_bytes())
    r.requests = r.server.advance()
    with pytest.raises(ReplayError, match="already received"):  # after the stage closed, too
        r.server.receive(wire)
    assert_round_still_exact(r)


def test_server_refuses_messages_of_another_round():
    r = Round(config())
    msg = r.reply(0)
    with pytest.raises(ReplayError, match="round 'old-round'"):
        r.server.receive(resign(r, msg, round_id="old-round").to_bytes())


def test_server_refuses_early_and_late_replies():
    r = Round(config())
    early = resign(r, MaskedInput(round_id=r.round_id, sender=0, data=bytes(32)))
    with pytest.raises(StageError, match="early"):
        r.server.receive(early.to_bytes())
    late = r.reply(4)  # client 4 answers Setup only after the stage closed
    r.step(silent={4})
    with pytest.raises(StageError, match="late"):
        r.server.receive(late.to_bytes())
    r.step()  # client 4 dropped out: it is no longer asked
    assert 4 not in r.requests
    assert np.array_equal(r.finish().total, r.expected_total(range(4)))


def test_client_refuses_a_replayed_or_foreign_request_and_carries_on():
    r = Round(config())
    setup = r.requests[0].to_bytes()
    r.step()
    with pytest.raises(ReplayError, match="already processed"):
        r.clients[0].handle(setup)
    other_round = r.requests[0].model_copy(update={"round_id": "another"})
    with pytest.raises(ReplayError, match="another"):
        r.clients[0].handle(other_round.to_bytes())
    assert r.clients[0].progress is Progress.ADVERTISED
    assert_round_still_exact(r)


def test_client_refuses_a_reordered_request_and_carries_on():
    r = Round(config())
    r.step()
    ahead = ConsistencyRequest(round_id=r.round_id, recipient=1, survivors=[0, 1, 2, 3, 4])
    with pytest.raises(StageError, match="expected a KeysBroadcast"):
        r.clients[1].handle(ahead.to_bytes())
    assert_round_still_exact(r)


def test_client_refuses_misdirected_and_malformed_requests():
    r = Round(config())
    with pytest.raises(MalformedMessageError, match="addressed to client 1"):
        r.clients[0].handle(r.requests[1].to_bytes())
    wire = r.requests[0].to_bytes()
    for bad in (b"", b"not a message", wire[:-5], wire[:12] + b"\x00" * 20, wire + b"trailing"):
        with pytest.raises(MalformedMessageError):
            r.clients[0].handle(bad)
    with pytest.raises(MalformedMessageError, match="does not accept"):
        r.clients[0].handle(MaskedInput(round_id=r.round_id, sender=1).to_bytes())  # a client's message
    assert_round_still_exact(r)


def test_server_refuses_malformed_replies():
    r = Round(config(length=8))
    with pytest.raises(MalformedMessageError):
        r.server.receive(b"\x00" * 40)
    r.run_to(Stage.MASKED_INPUT)
    short = resign(r, MaskedInput(round_id=r.round_id, sender=0, data=bytes(31)))
    with pytest.raises(MalformedMessageError, match="31 bytes, expected 32"):
        r.server.receive(short.to_bytes())
    assert_round_still_exact(r)


# -- forged messages ---------------------------------------------------------------------------


def test_server_refuses_forged_signatures_and_impersonation():
    r = Round(config())
    msg = r.reply(0)
    flipped = msg.model_copy(update={"signature": bytes([msg.signature[0] ^ 1]) + msg.signature[1:]})
    with pytest.raises(ForgedMessageError, match="signature does not verify"):
        r.server.receive(flipped.to_bytes())
    as_client_1 = msg.model_copy(update={"sender": 1})  # signed by 0, claims to be 1
    with pytest.raises(ForgedMessageError):
        r.server.receive(as_client_1.to_bytes())
    stranger = msg.model_copy(update={"sender": 99})
    with pytest.raises(ForgedMessageError, match="not a participant"):
        r.server.receive(stranger.to_bytes())
    unsigned = msg.model_copy(update={"signature": b""})
    with pytest.raises(ForgedMessageError):
        r.server.receive(unsigned.to_bytes())
    assert_round_still_exact(r)


def test_server_refuses_copied_and_unusable_keys():
    r = Round(config())
    first = r.reply(0)
    r.server.receive(first.to_bytes())
    # client 1 (authentic, malicious) advertises client 0's keys as its own
    k = first.keys
    payload = keys_payload(r.round_id, r.config.digest(), 1, k.enc_pk, k.mask_pk)
    copied = SignedKeys(client_id=1, enc_pk=k.enc_pk, mask_pk=k.mask_pk,
                        signature=crypto.sign(r.identities[1].private, payload))
    with pytest.raises(ForgedMessageError, match="repeat keys"):
        r.server.receive(resign(r, AdvertiseKeys(round_id=r.round_id, sender=1, keys=copied)).to_bytes())
    # a small-order public key would make every pairwise mask all-zero
    payload = keys_payload(r.round_id, r.config.digest(), 2, bytes(32), os.urandom(32))
    zero = SignedKeys(client_id=2, enc_pk=bytes(32), mask_pk=crypto.generate_agreement_key().public,
                      signature=crypto.sign(r.identities[2].private, payload))
    with pytest.raises((MalformedMessageError, ForgedMessageError)):
        r.server.receive(resign(r, AdvertiseKeys(round_id=r.round_id, sender=2, keys=zero)).to_bytes())


def test_client_detects_a_substituted_public_key():
    r = Round(config())
    r.step()
    request = r.requests[0]
    keys = list(request.keys)
    keys[2] = keys[2].model_copy(update={"enc_pk": crypto.generate_agreement_key().public})  # the server's own key
    with pytest.raises(ForgedMessageError, match="client 2"):
        r.clients[0].handle(request.model_copy(update={"keys": keys}).to_bytes())
    assert r.clients[0].progress is Progress.ABORTED
    with pytest.raises(StageError, match="aborted"):
        r.clients[0].handle(request.to_bytes())


def test_client_detects_its_own_keys_missing_from_the_broadcast():
    r = Round(config())
    r.step()
    request = r.requests[0]
    others = [k for k in request.keys if k.client_id != 0]
    with pytest.raises(ConsistencyError, match="own keys"):
        r.clients[0].handle(request.model_copy(update={"keys": others}).to_bytes())


def test_client_detects_tampered_or_relabelled_share_ciphertexts():
    r = Round(config())
    r.run_to(Stage.MASKED_INPUT)
    request = r.requests[0]
    shares = list(request.shares)
    ct = bytearray(shares[0].ciphertext)
    ct[20] ^= 1
    tampered = [shares[0].model_copy(update={"ciphertext": bytes(ct)}), *shares[1:]]
    with pytest.raises(ForgedMessageError, match=f"client {shares[0].sender}"):
        Round.reply(r, 0, request.model_copy(update={"shares": tampered}))

    r2 = Round(config())
    r2.run_to(Stage.MASKED_INPUT)
    request = r2.requests[0]
    a, b = request.shares[0], request.shares[1]
    relabelled = [a.model_copy(update={"sender": b.sender}), *request.shares[2:]]
    with pytest.raises(ForgedMessageError):
        r2.reply(0, request.model_copy(update={"shares": relabelled}))


def test_client_detects_forged_survivor_signatures():
    r = Round(config())
    r.run_to(Stage.UNMASK)
    request = r.requests[0]
    sigs = list(request.signatures)
    sigs[1] = SurvivorSignature(client_id=sigs[1].client_id, signature=os.urandom(64))
    with pytest.raises(ForgedMessageError, match=f"client {sigs[1].client_id}"):
        r.reply(0, request.model_copy(update={"signatures": sigs}))
    assert r.clients[0].progress is Progress.ABORTED


def test_server_refuses_a_forged_consistency_signature():
    r = Round(config())
    r.run_to(Stage.CONSISTENCY)
    msg = r.reply(0)
    bad = resign(r, msg, survivors_signature=os.urandom(64))
    with pytest.raises(ForgedMessageError, match="survivor set"):
        r.server.receive(bad.to_bytes())


# -- a server lying about who survived ----------------------------------------------------------


def test_server_telling_different_survivor_sets_learns_nothing():
    """Group A is told that everyone survived, group B that client 0 dropped. B may then reveal
    client 0's key share, but A never reveals client 0's self-mask share: it lacks a quorum of
    signatures on its set, and B's signatures do not verify on it."""
    r = Round(config(n=7, t=4))
    r.run_to(Stage.CONSISTENCY)
    u3, u3_without_0 = list(range(7)), list(range(1, 7))
    group_a, group_b = [0, 1, 2], [3, 4, 5, 6]
    sigs = {}
    for c in group_a:
        sigs[c] = r.reply(c, ConsistencyRequest(round_id=r.round_id, recipient=c, survivors=u3))
    for c in group_b:
        sigs[c] = r.reply(c, ConsistencyRequest(round_id=r.round_id, recipient=c, survivors=u3_without_0))
    signatures = [SurvivorSignature(client_id=c, signature=m.survivors_signature) for c, m in sigs.items()]
    only_a = [s for s in signatures if s.client_id in group_a]
    for c in group_a:
        with pytest.raises(TooFewSurvivorsError, match="3 signatures on the survivor set, 4 needed"):
            r.reply(c, UnmaskRequest(round_id=r.round_id, recipient=c, survivors=u3, dropped=[],
                                     signatures=only_a))
    # a fresh client of group A, offered every signature: B's do not verify on A's set
    r2 = Round(config(n=7, t=4))
    r2.run_to(Stage.CONSISTENCY)
    for c in range(7):
        sigs[c] = r2.reply(c, ConsistencyRequest(round_id=r2.round_id, recipient=c,
                                                 survivors=u3 if c in group_a else u3_without_0))
    everyone = [SurvivorSignature(client_id=c, signature=m.survivors_signature) for c, m in sigs.items()]
    with pytest.raises(ForgedMessageError, match="survivor set does not verify"):
        r2.reply(1, UnmaskRequest(round_id=r2.round_id, recipient=1, survivors=u3, dropped=[], signatures=everyone))
    assert all(r.clients[c].progress is not Progress.DONE for c in group_a)


def test_client_refuses_a_survivor_set_that_contradicts_what_it_saw():
    r = Round(config())
    r.run_to(Stage.CONSISTENCY)
    with pytest.raises(ConsistencyError, match="leaves out this client"):
        r.reply(0, ConsistencyRequest(round_id=r.round_id, recipient=0, survivors=[1, 2, 3, 4]))
    r2 = Round(config())
    r2.run_to(Stage.MASKED_INPUT)
    forward = r2.requests[0]
    r2.reply(0, forward.model_copy(update={"shares": [e for e in forward.shares if e.sender != 4]}))
    with pytest.raises(ConsistencyError, match=r"neighbours \[4\] .* never sent this client shares"):
        r2.reply(0, ConsistencyRequest(round_id=r2.round_id, recipient=0, survivors=[0, 1, 2, 3, 4]))


def test_unmask_request_must_carry_the_signed_survivor_set():
    r = Round(config())
    r.run_to(Stage.UNMASK)
    request = r.requests[0]
    with pytest.raises(ConsistencyError, match="differs from the one this client signed"):
        r.reply(0, request.model_copy(update={"survivors": [0, 1, 2, 3]}))


# -- double reveal -----------------------------------------------------------------------------


def test_request_for_both_shares_of_one_peer_is_refused():
    r = Round(config())
    r.run_to(Stage.UNMASK)
    request = r.requests[0]
    with pytest.raises(DoubleRevealError, match="key share of client 3, which is a survivor"):
        r.reply(0, request.model_copy(update={"dropped": [3]}))
    assert r.clients[0].progress is Progress.ABORTED  # and nothing was sent


def test_key_share_of_a_signed_survivor_is_refused_even_if_the_request_hides_it():
    r = Round(config())
    r.run_to(Stage.UNMASK)
    request = r.requests[0]
    # the server pretends client 3 was never a survivor and asks for its key share
    with pytest.raises(DoubleRevealError, match="client 3"):
        r.reply(0, request.model_copy(update={"survivors": [0, 1, 2, 4], "dropped": [3]}))


def test_no_second_reveal_after_the_round():
    r = Round(config())
    r.run_to(Stage.UNMASK)
    first = r.requests[0]
    r.reply(0, first)
    assert r.clients[0].progress is Progress.DONE
    with pytest.raises(ReplayError):
        r.reply(0, first)
    with pytest.raises(ReplayError):
        r.reply(0, first.model_copy(update={"dropped": [3]}))
    restored = ClientSession.restore(r.clients[0].export_state(), r.identities[0].private)
    with pytest.raises(ReplayError):
        restored.handle(first.model_copy(update={"dropped": [3]}).to_bytes())


def test_key_share_of_a_peer_whose_shares_never_arrived_is_refused():
    r = Round(config())
    r.run_to(Stage.UNMASK, silent={4})  # client 4 never took part
    with pytest.raises(MalformedMessageError, match="holds none of"):
        r.reply(0, r.requests[0].model_copy(update={"dropped": [4]}))


# -- malicious clients -------------------------------------------------------------------------


def test_a_wrong_share_is_caught_at_reconstruction():
    r = Round(config(n=5, t=3))
    r.run_to(Stage.UNMASK)
    for c in sorted(r.requests):
        msg = r.reply(c)
        if c == 0:  # client 0 lies about its share of client 2's seed (point 1 is used first)
            items = [ShareItem(owner=s.owner, share=os.urandom(66) if s.owner == 2 else s.share)
                     for s in msg.seed_shares]
            msg = resign(r, msg, seed_shares=items)
        r.server.receive(msg.to_bytes())
    with pytest.raises(ReconstructionError, match="client 2"):
        r.server.advance()


def test_server_refuses_unrequested_shares():
    r = Round(config())
    r.run_to(Stage.UNMASK)
    msg = r.reply(0)
    extra = resign(r, msg, key_shares=[ShareItem(owner=3, share=bytes(66))])
    with pytest.raises(MalformedMessageError, match="key shares are not those requested"):
        r.server.receive(extra.to_bytes())


# -- setup ---------------------------------------------------------------------------------------


def test_client_policy_can_refuse_the_config():
    def strict_policy(c: SecAggConfig):
        if c.threshold < 4:
            raise ConfigError(f"threshold {c.threshold} is below this site's minimum 4")

    r = Round(config())
    session = ClientSession(0, r.identities[0].private, r.roster, round_id=r.round_id, accept_config=strict_policy)
    with pytest.raises(ConfigError, match="below this site's minimum"):
        session.handle(r.requests[0].to_bytes())
    assert session.progress is Progress.ABORTED


def test_client_refuses_participants_outside_its_roster_or_the_bound():
    r = Round(config())
    setup = r.requests[0]
    with pytest.raises(MalformedMessageError, match=r"\[77\] are not in this client's roster"):
        r.clients[0].handle(setup.model_copy(update={"participants": [0, 1, 2, 77]}).to_bytes())
    r2 = Round(config(n=5), ids=range(5))
    too_many = r2.requests[0].model_copy(update={"config": config(n=3, t=2)})
    with pytest.raises(MalformedMessageError, match="exceed num_clients=3"):
        r2.clients[0].handle(too_many.to_bytes())


def test_sessions_refuse_bad_construction():
    ids = crypto.generate_identity(), crypto.generate_identity()
    roster = {0: ids[0].public, 1: ids[1].public}
    with pytest.raises(ConfigError, match="does not match"):
        ClientSession(0, ids[1].private, roster, round_id="r")
    with pytest.raises(ConfigError, match="not in its own roster"):
        ClientSession(5, ids[0].private, roster, round_id="r")
    with pytest.raises(ConfigError, match="no identity key"):
        ServerSession(config(n=5), round_id="r", roster=roster, participants=[0, 1, 2])
    with pytest.raises(ConfigError, match="participants"):
        ServerSession(config(n=5), round_id="r", roster=roster, participants=[0, 1])


def test_a_policy_hook_raising_anything_is_a_config_refusal():
    def policy(c: SecAggConfig):
        raise ValueError("modulus too small for this site")

    r = Round(config())
    session = ClientSession(0, r.identities[0].private, r.roster, round_id=r.round_id, accept_config=policy)
    with pytest.raises(ConfigError, match="refuses the round's config: modulus too small"):
        session.handle(r.requests[0].to_bytes())


def test_errors_name_stage_and_client():
    r = Round(config())
    r.run_to(Stage.UNMASK)
    with pytest.raises(DoubleRevealError) as err:
        r.reply(0, r.requests[0].model_copy(update={"dropped": [3]}))
    assert str(err.value).startswith("[stage unmask, client 3]")
    assert (err.value.stage, err.value.client) == ("unmask", 3)


def test_sixty_four_bit_node_ids():
    ids = [2**64 - 1, 2**63 + 5, 7, 123456789012345678]
    r = Round(config(n=4, t=3), ids=ids)
    assert np.array_equal(r.finish().total, r.expected_total(ids))
