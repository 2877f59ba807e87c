"""Attacks 3 and 6 of issue 11: replays. A server runs round 1 with every site, then "resumes" it in
a new run from the same global model with the victim missing, to difference the two sums; or it
replays a setup, or old survivor signatures, into a new session.

A site remembers in its own state directory what it agreed to have unmasked: without DP it never
signs a second sum from the same global model over other sites; under DP it may, and the ledger
charges both. A session id is never accepted twice, and survivor signatures are bound to their
session. Training randomness is the site's own (an HMAC under its `training.key`), so the server's
seed neither reaches it nor predicts it. Node 1 is the victim; the sites use the research policy.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from adversary import DP_SGD, MaliciousServer, ScriptedRound, estimate_error, make_sites, policy_file, reply_of
from flwr.app import RecordDict
from PIL import Image

from fedmed.fl.site import training
from fedmed.fl.wire.messages import SECAGG, TRAIN, UPDATE, refusal_reason
from fedmed.fl.wire.transcript import vector_sha256
from fedmed.models.pretrained import BUILTIN_WEIGHTS
from secure_agg import Stage, TooFewSurvivorsError, crypto
from secure_agg.messages import ConsistencySignature, SurvivorSignature, UnmaskRequest, survivors_payload

VICTIM, OTHERS = 1, (2, 3)


def replay_without_the_victim(server: MaliciousServer) -> tuple[ScriptedRound, ScriptedRound]:
    """Run A: round 1 with every site, to the end. Run B: a new run id, the same global vector and
    participants, the victim "not answering" from its masked input on; B is left at the consistency
    stage with the survivors' replies in `replies[Stage.CONSISTENCY]`."""
    run_a = ScriptedRound(server, server.transcript(run_id="run-a"))
    run_a.finish()
    run_b = ScriptedRound(server, server.transcript(run_id="run-b"))
    run_b.step()  # setup: the same participants, nothing to refuse yet
    run_b.step()  # share keys
    run_b.step(silent=(VICTIM,))
    assert run_b.session.survivors[Stage.MASKED_INPUT] == set(OTHERS)
    run_b.ask()
    return run_a, run_b


def test_a_round_replayed_without_the_victim_is_never_unmasked(tmp_path, updates):
    sites = make_sites(tmp_path, policy="research")
    server = MaliciousServer(sites)
    run_a, run_b = replay_without_the_victim(server)
    for node in OTHERS:  # the replay would work: training is deterministic, the two updates are the same
        first, second = updates[sites.party(node)]
        assert np.array_equal(first, second)
    for node in OTHERS:
        reason = run_b.refusals[node]
        assert "already agreed to a sum from the same global model" in reason and "over sites [1, 2, 3]" in reason
        assert reason in sites.refusals(node)
    with pytest.raises(TooFewSurvivorsError):
        run_b.advance()
    unmask = {node: server.stage_content(UnmaskRequest(round_id=run_b.transcript.session_id, recipient=node,
                                                       survivors=list(OTHERS), dropped=[VICTIM], signatures=[]))
              for node in OTHERS}  # and a server that asks for the victim's key shares all the same
    for node, reply in server.send(SECAGG, unmask).items():
        assert "already agreed to a sum" in refusal_reason(reply)
    for node in server.nodes:  # run A's sum is the only one any site agreed to
        assert [s["session"] for s in sites.sums(node)] == [run_a.transcript.session_id]


def test_under_dp_a_replay_is_allowed_and_charged(tmp_path, updates):
    """Under DP with a capped ledger a repeat costs budget, so it is allowed."""
    capped = policy_file(tmp_path, "capped", 'extends = "research"\n[privacy]\nmax_epsilon = 100.0\n')
    sites = make_sites(tmp_path, policy=capped, privacy=DP_SGD)
    server = MaliciousServer(sites)
    run_a, run_b = replay_without_the_victim(server)
    assert not run_b.refusals
    run_b.advance()
    run_b.finish()
    for node in OTHERS:
        assert [entry["round"] for entry in sites.ledger_rounds(node)] == [1, 1]  # run A's round 1, then B's
        assert [s["dp"] for s in sites.sums(node)] == [True, True]
    assert len(sites.ledger_rounds(VICTIM)) == 1
    total_a, total_b = run_a.session.result.total, run_b.session.result.total
    weight = (total_a[-1] - total_b[-1]) / run_a.transcript.config.clip  # the victim's weight / the max weight
    error, correlation = estimate_error((total_a[:-1] - total_b[:-1]) / weight, updates[sites.party(VICTIM)][0])
    assert error > 0.5, (error, correlation)  # the difference is the victim's update plus the others' DP noise


def test_under_dp_without_a_cap_a_replay_is_free_and_so_refused(tmp_path, updates):
    """`research` caps no epsilon: a DP repeat would cost nothing, so it is held to the no-DP rule."""
    sites = make_sites(tmp_path, policy="research", privacy=DP_SGD)
    _run_a, run_b = replay_without_the_victim(MaliciousServer(sites))
    assert set(run_b.refusals) == set(OTHERS)
    assert all("already agreed to a sum from the same global model" in r for r in run_b.refusals.values())


def test_without_dp_a_nudged_global_vector_is_a_new_start_to_the_release_memory(tmp_path, updates):
    """What the release memory cannot promise (docs/secure_aggregation.md): it knows a global vector
    by its SHA-256. Nudged by one unit in the last place, the replay without the victim is signed,
    and the difference of the two sums is the victim's update plus exactly the change of the other
    sites' updates, which only their training randomness makes. This is why `strict` requires DP."""
    sites = make_sites(tmp_path, policy="research")
    server = MaliciousServer(sites)
    run_a = ScriptedRound(server, server.transcript(run_id="run-a"))
    run_a.finish()
    nudged = server.start.copy()
    nudged[0] = np.nextafter(nudged[0], np.float32(1))
    run_b = ScriptedRound(server, server.transcript(run_id="run-b", start=nudged))
    run_b.step()
    run_b.step()
    run_b.step(silent=(VICTIM,), train={node: {"instructions": run_b.transcript.instructions, "start": nudged}
                                        for node in OTHERS})
    run_b.finish()
    assert not run_b.refusals and [len(sites.sums(node)) for node in OTHERS] == [2, 2]
    total_a, total_b = run_a.session.result.total, run_b.session.result.total
    weight = total_a[-1] - total_b[-1]  # the victim's (equal) weight: 1
    estimate = (total_a[:-1] - total_b[:-1]) / weight
    drift = sum(updates[sites.party(node)][0] - updates[sites.party(node)][1] for node in OTHERS)
    assert np.abs(estimate - updates[sites.party(VICTIM)][0] - drift).max() < 1e-4  # 5 quantization steps


def test_a_replayed_train_message_is_refused_before_training_and_charges_nothing(tmp_path):
    """A server that sends a site its train message again (the same session, the same shares) would
    make it train again and charge its privacy ledger for an update that can never leave: a drain
    of its budget. The site refuses before training; its ledger holds the one round it released."""
    sites = make_sites(tmp_path, policy="research", privacy=DP_SGD)
    server = MaliciousServer(sites)
    scripted = ScriptedRound(server, server.transcript(run_id="drain"))
    scripted.step()
    scripted.step()
    shares = dict(scripted.requests)
    scripted.step()
    assert len(sites.ledger_rounds(VICTIM)) == 1
    for _ in range(3):
        again = server.send(TRAIN, {VICTIM: server.train_content(scripted.transcript.instructions, shares[VICTIM])})
        assert "not this site's next one (its session is masked; a masked input is sent once): nothing is trained" in (
            refusal_reason(again[VICTIM]))
    assert len(sites.ledger_rounds(VICTIM)) == 1 and sites.sent(VICTIM).count("update.weight") == 1


# -- the training randomness ----------------------------------------------------------------------


def one_case_folder(root):
    """A hospital with one case (its train/validation split is the same under every seed)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:32, :32]
    mask = ((yy - 16) ** 2 + (xx - 14) ** 2 <= 64).astype(np.uint8)
    image = (np.random.default_rng(0).uniform(0, 80, (32, 32)) + 150 * mask).astype(np.uint8)
    Image.fromarray(np.stack([image] * 3, -1)).save(root / "images" / "case0.png")
    Image.fromarray(mask * 255).save(root / "masks" / "case0.png")
    return root


def test_training_randomness_is_the_sites_own(tmp_path, monkeypatch):
    """Two runs with other `federation.seed`s from the same global vector train identically (the
    starting weights are the built-in ones, so the seed initialises nothing that trains either);
    the seed is the HMAC of the global vector and round under the site's `training.key`, and
    another key trains differently."""
    sites = make_sites(tmp_path, policy="research", folders=[one_case_folder(tmp_path / "hospital")],
                       secure={"enabled": False}, checkpoint=BUILTIN_WEIGHTS["tiny"])
    server = MaliciousServer(sites)
    seeds, train_local = [], training.train_local
    monkeypatch.setattr(training, "train_local",
                        lambda model, data, config: seeds.append(config.seed) or train_local(model, data, config))

    def update(seed: int) -> np.ndarray:
        content = server.train_content(server.instructions(federation={"seed": seed}), None)
        return server.send(TRAIN, {1: content})[1][UPDATE]["flat"].numpy()

    first, second = update(0), update(2**31 - 1)
    assert seeds[0] == seeds[1] and np.array_equal(first, second)
    key_file = sites.folder(1) / training.TRAINING_KEY
    message = f"{vector_sha256(server.start)}/1".encode()
    assert seeds[0] == int.from_bytes(hmac.new(key_file.read_bytes(), message, hashlib.sha256).digest()[:4],
                                      "big") & 0x7FFFFFFF
    key_file.write_bytes(bytes(32))  # another site's key; everything else the same
    third = update(0)
    assert seeds[2] != seeds[0] and not np.array_equal(third, first)


# -- attack 6: session-id reuse -------------------------------------------------------------------


def test_a_session_is_never_run_twice_and_old_survivor_signatures_do_not_carry_over(tmp_path):
    sites = make_sites(tmp_path, policy="research")
    server = MaliciousServer(sites)
    first = ScriptedRound(server, server.transcript(run_id="run-1"))
    first.finish()
    for context in sites.grid.contexts.values():  # the sites restart: their Context remembers nothing
        context.state = RecordDict()
    replayed = server.send(SECAGG, {node: server.setup_content(first.transcript, node) for node in server.nodes})
    for node, reply in replayed.items():
        reason = refusal_reason(reply)
        assert "was already run with this site; a session id is never accepted twice" in reason
        assert reason in sites.refusals(node)
    old = {c: reply_of(first.replies[Stage.CONSISTENCY][c]).survivors_signature for c in server.nodes}
    config, everyone = first.transcript.config, list(server.nodes)
    for c in server.nodes:  # valid signatures on the same U1 and U3, in their own session
        payload = survivors_payload(first.transcript.session_id, config.digest(), everyone, everyone)
        assert crypto.verify(sites.roster.ids[c], old[c], payload)
    second = ScriptedRound(server, server.transcript(run_id="run-2"))
    for _ in range(3):  # setup, share keys, masked input: every site
        second.step()
    second.ask(silent=OTHERS)  # only the victim is asked to sign the survivors
    mine = reply_of(second.replies[Stage.CONSISTENCY][VICTIM])
    assert isinstance(mine, ConsistencySignature)
    signatures = [SurvivorSignature(client_id=VICTIM, signature=mine.survivors_signature)] + [
        SurvivorSignature(client_id=c, signature=old[c]) for c in OTHERS]
    request = UnmaskRequest(round_id=second.transcript.session_id, recipient=VICTIM, survivors=everyone, dropped=[],
                            signatures=signatures)
    reason = refusal_reason(server.send(SECAGG, {VICTIM: server.stage_content(request)})[VICTIM])
    assert "its signature on the survivor set does not verify" in reason and reason in sites.refusals(VICTIM)
