"""Attack 5 of issue 11: split views with fewer than t colluders, on the protocol itself.

10 clients, 4 of them (7-10) colluding with the server, the victim client 1. The server tells some
honest clients "the victim survived" (they reveal shares of its self-mask seed) and others "the
victim dropped" (they reveal shares of its masking key); the colluders sign both survivor sets and
hand over both shares. Each honest client reveals only after a quorum q = max(t, floor(|U1|/2) + 1)
of signatures on the (U1, U3) it signed, so both views reach q only if c >= 2q - n colluders sign
both: with t = 7 (2t - n = 4 = c) the split works and the victim's update is recovered exactly —
the bound is real, not a defect — and with t = 8 (2t - n = 6 > 4) it fails whatever the split.
Survivor signatures cover U1, so clients shown different U1 never count each other's signatures.
A site whose policy assumes 4 colluders refuses a round of t = 7 of 10 at its setup.
"""

from __future__ import annotations

import numpy as np
import pytest
from adversary import MaliciousServer, estimate_error, make_sites, policy_file, reply_of

from fedmed.fl.wire.messages import refusal_reason
from secure_agg import (
    ClientSession,
    ForgedMessageError,
    InsufficientSharesError,
    Progress,
    SecAggConfig,
    TooFewSurvivorsError,
    crypto,
    decode,
    make_identities,
    shamir,
)
from secure_agg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    KeysBroadcast,
    MaskedInput,
    Setup,
    SharesForward,
    SurvivorSignature,
    UnmaskRequest,
    survivors_payload,
)
from secure_agg.pairing import pairwise_keys
from secure_agg.prg import apply_masks

N, VICTIM = 10, 1
COLLUDERS = (7, 8, 9, 10)
ROUND = "split-views/round-1"


class Round:
    """Ten clients and a scripted server that may show each client its own U1 and U3; the
    colluders' sessions (their shares, their keys) are the server's to read."""

    def __init__(self, threshold: int, *, length: int = 64):
        self.ids = list(range(1, N + 1))
        self.config = SecAggConfig(num_clients=N, threshold=threshold, vector_length=length, clip=1.0,
                                   precision_bits=16)
        self.identities = make_identities(self.ids)
        roster = {c: k.public for c, k in self.identities.items()}
        self.clients = {c: ClientSession(c, self.identities[c].private, roster, round_id=ROUND) for c in self.ids}
        scale = self.config.scale
        rng = np.random.default_rng(threshold)  # updates on the fixed-point grid: encoding them is exact
        self.updates = {c: rng.integers(-int(scale), int(scale) + 1, length) / scale for c in self.ids}
        self.keys: dict[int, AdvertiseKeys] = {}
        self.masked: dict[int, MaskedInput] = {}
        self.refused: dict[int, Exception] = {}

    def mask(self, u1: dict[int, list[int]] | None = None) -> None:
        """Setup, keys (client c is shown the keys of `u1[c]`, default everyone's), shares and masked inputs."""
        u1 = u1 or {}
        for c in self.ids:
            setup = Setup(round_id=ROUND, recipient=c, config=self.config, participants=self.ids)
            self.keys[c] = self.clients[c].handle(setup.to_bytes())
        shared = {c: self.clients[c].handle(KeysBroadcast(round_id=ROUND, recipient=c, keys=[
            self.keys[u].keys for u in u1.get(c, self.ids)]).to_bytes()) for c in self.ids}
        for c in self.ids:
            forwarded = [e for u in u1.get(c, self.ids) if u != c for e in shared[u].shares if e.recipient == c]
            try:
                self.masked[c] = self.clients[c].handle(SharesForward(round_id=ROUND, recipient=c, shares=forwarded),
                                                        update=self.updates[c])
            except TooFewSurvivorsError as error:
                self.refused[c] = error

    def u1(self, c: int) -> list[int]:
        return sorted(self.clients[c]._state.keys)

    def sign(self, c: int, survivors: list[int]) -> SurvivorSignature:
        """Client c's signature on `survivors`, through its session (once a round)."""
        reply = self.clients[c].handle(ConsistencyRequest(round_id=ROUND, recipient=c, survivors=survivors).to_bytes())
        return SurvivorSignature(client_id=c, signature=reply.survivors_signature)

    def collude(self, c: int, survivors: list[int]) -> SurvivorSignature:
        """A colluder's signature on whatever it is asked (it signs both views)."""
        payload = survivors_payload(ROUND, self.config.digest(), self.u1(c), sorted(survivors))
        return SurvivorSignature(client_id=c, signature=crypto.sign(self.identities[c].private, payload))

    def unmask(self, c: int, survivors: list[int], dropped: list[int], signatures: list[SurvivorSignature]):
        request = UnmaskRequest(round_id=ROUND, recipient=c, survivors=survivors, dropped=dropped,
                                signatures=signatures)
        return self.clients[c].handle(request.to_bytes())

    def split(self, told_survived: tuple[int, ...], told_dropped: tuple[int, ...]) -> tuple[dict, dict]:
        """The attack: (seed shares, key shares) of the victim the server collects, by share point;
        an honest client that refuses is kept in `refused`."""
        seeds, keys = {}, {}
        views = ((told_survived, self.ids, [], seeds), (told_dropped, [c for c in self.ids if c != VICTIM], [VICTIM],
                                                        keys))
        for honest, survivors, dropped, collected in views:
            signatures = [self.sign(c, survivors) for c in honest] + [self.collude(c, survivors) for c in COLLUDERS]
            for c in honest:
                try:
                    reply = self.unmask(c, survivors, dropped, signatures)
                except TooFewSurvivorsError as error:
                    self.refused[c] = error
                    continue
                revealed = reply.key_shares if dropped else reply.seed_shares
                collected.update({shamir.share_point(c): i.share for i in revealed if i.owner == VICTIM})
        for c in COLLUDERS:
            seed_share, key_share = self.clients[c]._state.held[VICTIM]
            seeds[shamir.share_point(c)], keys[shamir.share_point(c)] = seed_share, key_share
        return seeds, keys

    def strip(self, seed: bytes | None, mask_key: bytes | None) -> np.ndarray:
        """The victim's masked input without the masks the server can compute: its self mask (given
        its seed), its pairwise masks with every client (given its masking key) or else with the
        colluders (from their own keys); decoded."""
        words = np.frombuffer(self.masked[VICTIM].data, dtype="<u4").astype(np.uint32)
        if seed is not None:
            apply_masks(words, subtract=[seed])
        if mask_key is not None:
            peers = {w: self.keys[w].keys.mask_pk for w in self.ids if w != VICTIM}
            pairwise = pairwise_keys(mask_key, VICTIM, peers, b"pairwise-mask", ROUND)
        else:
            pairwise = {w: pairwise_keys(self.clients[w]._state.mask_sk, w, {VICTIM: self.keys[VICTIM].keys.mask_pk},
                                         b"pairwise-mask", ROUND)[VICTIM] for w in COLLUDERS}
        apply_masks(words, subtract=[s for w, s in pairwise.items() if VICTIM < w],
                    add=[s for w, s in pairwise.items() if VICTIM > w])
        return decode(words, self.config)


def test_with_a_quorum_of_7_of_10_four_colluders_recover_the_victim_by_splitting_the_views():
    """The documented bound, 2t - n > c, is what holds: here 2 * 7 - 10 = 4 = c."""
    attack = Round(threshold=7)
    attack.mask()
    seeds, keys = attack.split(told_survived=(1, 2, 3), told_dropped=(4, 5, 6))
    assert not attack.refused and len(seeds) == len(keys) == 7
    recovered = attack.strip(shamir.reconstruct(seeds, 7), shamir.reconstruct(keys, 7))
    assert np.array_equal(recovered, attack.updates[VICTIM])


@pytest.mark.parametrize("told_survived, told_dropped", [((1, 2, 3), (4, 5, 6)), ((1, 2, 3, 4), (5, 6)),
                                                         ((1, 2), (3, 4, 5, 6))])
def test_with_t_8_of_10_no_split_by_four_colluders_unmasks_the_victim(told_survived, told_dropped):
    """2 * 8 - 10 = 6 > 4. A view signed by fewer than 8 gets no share; the one view that can reach
    8 signatures reveals one secret of the victim, never both, and the server's best estimate (the
    self mask, or the colluders' pairwise masks, taken off) is noise."""
    attack = Round(threshold=8)
    attack.mask()
    seeds, keys = attack.split(told_survived, told_dropped)
    short = [view for view in (told_survived, told_dropped) if len(view) + len(COLLUDERS) < 8]
    for c in (c for view in short for c in view):
        assert isinstance(attack.refused[c], TooFewSurvivorsError) and "8 needed" in str(attack.refused[c])
        assert attack.clients[c].progress is Progress.ABORTED and attack.clients[c]._state.revealed == {}
    assert min(len(seeds), len(keys)) < 8
    for shares in (seeds, keys):
        if len(shares) < 8:
            with pytest.raises(InsufficientSharesError):
                shamir.reconstruct(shares, 8)
    seed = shamir.reconstruct(seeds, 8) if len(seeds) >= 8 else None
    mask_key = shamir.reconstruct(keys, 8) if len(keys) >= 8 else None
    error, correlation = estimate_error(attack.strip(seed, mask_key), attack.updates[VICTIM])
    assert error > 1e3 and abs(correlation) < 0.5, (error, correlation)


def test_signatures_on_another_u1_do_not_count_toward_the_quorum():
    """The server shows clients 1-5 a U1 without client 10 and clients 6-10 the whole U1 (client 10,
    holding too few shares of its own, drops). All nine survivors sign U3 = 1..9, but each
    signature covers the signer's U1: no client sees 7 valid signatures, none reveals a share.
    Shown one U1, the same nine signatures unmask."""
    attack = Round(threshold=7)
    attack.mask(u1={c: list(range(1, 10)) for c in range(1, 6)})
    assert list(attack.refused) == [10]
    survivors = list(range(1, 10))
    signatures = [attack.sign(c, survivors) for c in survivors]
    for c in survivors:
        dropped = [10] if 10 in attack.u1(c) else []  # clients 1-5 never heard of client 10
        assert len([s for s in signatures if attack.u1(s.client_id) == attack.u1(c)]) < 7
        with pytest.raises(ForgedMessageError, match="signature on the survivor set does not verify"):
            attack.unmask(c, survivors, dropped, signatures)
        assert attack.clients[c]._state.revealed == {}
    honest = Round(threshold=7)
    honest.mask()
    signatures = [honest.sign(c, survivors) for c in survivors]
    assert [item.owner for item in honest.unmask(1, survivors, [10], signatures).key_shares] == [10]


def test_a_site_assuming_four_colluders_refuses_t_7_of_10_at_its_setup(tmp_path):
    cautious = 'extends = "research"\nname = "four-colluders"\n[secure_aggregation]\nmax_colluders = 4\n'
    sites = make_sites(tmp_path, policy=policy_file(tmp_path, "four-colluders", cautious), count=N,
                       secure={"threshold": 7}, min_clients=N)
    server = MaliciousServer(sites)
    replies = server.setup(server.transcript(run_id="seven"), nodes=[VICTIM])
    reason = refusal_reason(replies[VICTIM])
    assert ("secure_aggregation.max_colluders: threshold 7 of 10 share holders tolerates 3 colluding site(s) "
            "(2t - h - 1); this site assumes 4") in reason and reason in sites.refusals(VICTIM)
    eight = server.transcript(run_id="eight", instructions=server.instructions(secure={"threshold": 8}))
    assert eight.config.threshold == 8
    assert isinstance(reply_of(server.setup(eight, nodes=[VICTIM])[VICTIM]), AdvertiseKeys)
