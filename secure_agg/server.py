"""The server side of the protocol: a state machine that runs the five stages.

    server = ServerSession(config, round_id="run-7/round-3", roster=roster, participants=ids)
    requests = server.start()                 # {client id: Setup}
    while not server.done:
        for reply in <send requests, collect replies until a deadline>:
            server.receive(reply)             # raises a named error for a bad reply, which is ignored
        requests = server.advance()           # closes the stage; {} once the sum is ready
    result = server.result                    # AggregateResult: the decoded sum and who is in it

Clients that do not reply before :meth:`advance` count as dropped. The server sees only masked
vectors; it removes the masks with shares from at least t survivors, or raises
:class:`TooFewSurvivorsError` and aborts as soon as some client's secrets could no longer be
reconstructed (clients reveal shares only after agreeing on the survivor set, so an abort
before the last stage reveals no share at all, and fewer than t shares reveal nothing).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import crypto, shamir
from .config import SecAggConfig
from .crypto import CryptoError
from .encoding import decode
from .errors import (
    ConfigError,
    ForgedMessageError,
    InsufficientSharesError,
    MalformedMessageError,
    ReconstructionError,
    ReplayError,
    StageError,
    TooFewSurvivorsError,
)
from .graph import graph_seed, neighbours
from .messages import (
    STAGES,
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    KeysBroadcast,
    MaskedInput,
    ServerMessage,
    Setup,
    ShareKeys,
    SharesForward,
    SignedKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    keys_payload,
    parse,
    seed_commitment,
    survivors_payload,
)
from .pairing import pairwise_keys
from .prg import apply_masks

_REPLY = {
    Stage.ADVERTISE_KEYS: AdvertiseKeys,
    Stage.SHARE_KEYS: ShareKeys,
    Stage.MASKED_INPUT: MaskedInput,
    Stage.CONSISTENCY: ConsistencySignature,
    Stage.UNMASK: UnmaskResponse,
}


@dataclass(frozen=True)
class AggregateResult:
    """The unmasked sum: ``total`` (float64, decoded) of the inputs of ``survivors``."""

    total: np.ndarray
    encoded_total: np.ndarray  # the same sum modulo 2^k, as the config's unsigned words
    survivors: tuple[int, ...]  # U3: clients whose inputs are in the sum
    dropped: tuple[int, ...]  # participants whose inputs are not

    @property
    def mean(self) -> np.ndarray:
        return self.total / len(self.survivors)


class ServerSession:
    """The server's part in one round. See the module docstring for the loop."""

    def __init__(self, config: SecAggConfig, *, round_id: str, roster: Mapping[int, bytes], participants: Sequence[int]):
        ids = list(participants)
        problems = []
        if len(set(ids)) != len(ids):
            problems.append("participants are listed twice")
        if sorted(set(ids) - set(roster)):
            problems.append(f"participants {sorted(set(ids) - set(roster))} have no identity key in the roster")
        if not config.threshold <= len(set(ids)) <= config.num_clients:
            problems.append(f"{len(set(ids))} participants; need between threshold {config.threshold} "
                            f"and num_clients {config.num_clients}")
        if problems:
            raise ConfigError("; ".join(problems))
        self.config = config
        self.round_id = round_id
        self._roster = dict(roster)
        self.participants = tuple(sorted(ids))
        self._digest = config.digest()
        self.stage: Stage | None = None  # the stage whose replies are being collected
        self.done = False
        self.abort_reason: str | None = None
        self.survivors: dict[Stage, frozenset[int]] = {}  # who replied, per closed stage (U1 ... U5)
        self._asked: frozenset[int] = frozenset()
        self._inbox: dict[int, ClientMessage] = {}
        self._keys: dict[int, SignedKeys] = {}
        self._nbrs: dict[int, frozenset[int]] = {}
        self._quorum = config.threshold
        self._shares: dict[int, ShareKeys] = {}
        self._dropped_asked: dict[int, frozenset[int]] = {}
        self._acc = np.zeros(0, dtype=config.dtype)
        self._result: AggregateResult | None = None
        self.timings: dict[str, float] = {"collect_s": 0.0, "collect_cpu_s": 0.0}

    # -- public API ---------------------------------------------------------------------------

    @property
    def aborted(self) -> bool:
        return self.abort_reason is not None

    @property
    def result(self) -> AggregateResult:
        if self._result is None:
            raise StageError("no result: the round " + ("was aborted: " + self.abort_reason if self.aborted
                                                      else "is not finished"))
        return self._result

    def start(self) -> dict[int, Setup]:
        """The first requests: the config and the participants, to every participant."""
        if self.stage is not None or self.done or self.aborted:
            raise StageError("the round was already started")
        self.stage = Stage.ADVERTISE_KEYS
        self._asked = frozenset(self.participants)
        return {c: Setup(round_id=self.round_id, recipient=c, config=self.config, participants=list(self.participants))
                for c in self.participants}

    def receive(self, message: ClientMessage | bytes) -> None:
        """Check and record one reply. Raises a named error (and records nothing) if it is bad."""
        msg = message if isinstance(message, ClientMessage) else parse(message)
        if not isinstance(msg, ClientMessage):
            raise MalformedMessageError(f"the server does not accept a {type(msg).__name__}")
        stage, sender = msg.stage, msg.sender
        if msg.round_id != self.round_id:
            raise ReplayError(f"message of round {msg.round_id!r}, this is round {self.round_id!r}",
                              stage=stage.value, client=sender)
        if sender not in self._roster or sender not in self.participants:
            raise ForgedMessageError("the sender is not a participant of this round", stage=stage.value, client=sender)
        if not msg.verify(self._roster[sender]):
            raise ForgedMessageError("the message signature does not verify", stage=stage.value, client=sender)
        if self.done or self.aborted or self.stage is None:
            raise StageError("the round is not collecting replies", stage=stage.value, client=sender)
        if stage != self.stage:
            late = stage.index < self.stage.index
            if late and sender in self.survivors.get(stage, ()):
                raise ReplayError("this reply was already received", stage=stage.value, client=sender)
            raise StageError(f"the server is collecting stage {self.stage.value}; this reply is "
                             + ("late" if late else "early"), stage=stage.value, client=sender)
        if sender in self._inbox:
            raise ReplayError("this reply was already received", stage=stage.value, client=sender)
        if sender not in self._asked:
            raise StageError("this client is not part of the stage (it dropped out earlier)",
                             stage=stage.value, client=sender)
        t0, c0 = time.perf_counter(), time.process_time()
        getattr(self, f"_check_{stage.value}")(msg)
        if stage is Stage.MASKED_INPUT:  # summed on arrival; the vector itself is not kept
            msg = msg.model_copy(update={"data": b""})
            self.timings["collect_s"] += time.perf_counter() - t0
            self.timings["collect_cpu_s"] += time.process_time() - c0
        self._inbox[sender] = msg

    def advance(self) -> dict[int, ServerMessage]:
        """Close the current stage; the requests of the next one ({} when the sum is ready)."""
        if self.aborted:
            raise StageError(f"the round was aborted: {self.abort_reason}")
        if self.done or self.stage is None:
            raise StageError("the round is not running")
        stage, replied = self.stage, frozenset(self._inbox)
        self.survivors[stage] = replied
        close = getattr(self, f"_close_{stage.value}")
        inbox, self._inbox = self._inbox, {}
        requests = close(inbox)
        if self.done:
            self.stage, self._asked = None, frozenset()
            return {}
        self.stage = STAGES[stage.index + 1]
        self._asked = frozenset(requests)
        return requests

    # -- checks of single replies ------------------------------------------------------------

    def _check_advertise_keys(self, msg: AdvertiseKeys) -> None:
        k = msg.keys
        if k.client_id != msg.sender:
            raise ForgedMessageError(f"keys of client {k.client_id} sent by another", stage="advertise_keys",
                                     client=msg.sender)
        if not crypto.verify(self._roster[msg.sender], k.signature,
                             keys_payload(self.round_id, self._digest, k.client_id, k.enc_pk, k.mask_pk)):
            raise ForgedMessageError("the signature on its keys does not verify", stage="advertise_keys",
                                     client=msg.sender)
        try:  # small-order points would make every key agreed with them public
            crypto.agree_many(crypto.generate_agreement_key().private, [(k.enc_pk, b"probe"), (k.mask_pk, b"probe")])
        except CryptoError as exc:
            raise MalformedMessageError(f"unusable public key: {exc}", stage="advertise_keys", client=msg.sender)
        used = {pk for m in self._inbox.values() for pk in (m.keys.enc_pk, m.keys.mask_pk)}
        if k.enc_pk == k.mask_pk or k.enc_pk in used or k.mask_pk in used:
            raise ForgedMessageError("its keys repeat keys already advertised", stage="advertise_keys",
                                     client=msg.sender)

    def _check_share_keys(self, msg: ShareKeys) -> None:
        recipients = [e.recipient for e in msg.shares]
        if any(e.sender != msg.sender for e in msg.shares):
            raise ForgedMessageError("it sent shares in another client's name", stage="share_keys", client=msg.sender)
        if len(set(recipients)) != len(recipients) or set(recipients) != self._nbrs[msg.sender]:
            raise MalformedMessageError("its shares are not addressed to exactly its neighbours",
                                        stage="share_keys", client=msg.sender)

    def _check_masked_input(self, msg: MaskedInput) -> None:
        if len(msg.data) != self.config.masked_input_bytes:
            raise MalformedMessageError(f"masked input of {len(msg.data)} bytes, expected "
                                        f"{self.config.masked_input_bytes}", stage="masked_input", client=msg.sender)
        if self._acc.size == 0:
            self._acc = np.zeros(self.config.vector_length, dtype=self.config.dtype)
        words = np.frombuffer(msg.data, dtype=self.config.dtype.newbyteorder("<"))
        np.add(self._acc, words, out=self._acc)

    def _check_consistency(self, msg: ConsistencySignature) -> None:
        payload = survivors_payload(self.round_id, self._digest, sorted(self.survivors[Stage.ADVERTISE_KEYS]),
                                    sorted(self.survivors[Stage.MASKED_INPUT]))
        if not crypto.verify(self._roster[msg.sender], msg.survivors_signature, payload):
            raise ForgedMessageError("its signature on the survivor set does not verify", stage="consistency",
                                     client=msg.sender)

    def _check_unmask(self, msg: UnmaskResponse) -> None:
        w = msg.sender
        want_seeds = self.survivors[Stage.MASKED_INPUT] & (self._nbrs[w] | {w})
        seeds = [s.owner for s in msg.seed_shares]
        keys = [s.owner for s in msg.key_shares]
        if len(set(seeds)) != len(seeds) or set(seeds) != want_seeds:
            raise MalformedMessageError("its self-mask shares are not those requested", stage="unmask", client=w)
        if len(set(keys)) != len(keys) or set(keys) != self._dropped_asked[w]:
            raise MalformedMessageError("its key shares are not those requested", stage="unmask", client=w)

    # -- closing stages ----------------------------------------------------------------------

    def _abort(self, stage: Stage, message: str, client: int | None = None) -> TooFewSurvivorsError:
        err = TooFewSurvivorsError(message + "; the round is aborted", stage=stage.value, client=client)
        self.abort_reason = str(err)
        return err

    def _need(self, stage: Stage, alive: frozenset[int], count: int) -> None:
        if len(alive) < count:
            raise self._abort(stage, f"{len(alive)} clients left, {count} needed")

    def _check_holders(self, stage: Stage, alive: frozenset[int], owners: frozenset[int]) -> None:
        """Abort if some client's secrets can no longer reach t shares among ``alive``."""
        t = self.config.threshold
        for v in sorted(owners):
            have = len((self._nbrs[v] | {v}) & alive) if v in alive else len(self._nbrs[v] & alive)
            if have < t:
                raise self._abort(stage, f"only {have} remaining clients hold shares of client {v}, {t} needed", v)

    def _close_advertise_keys(self, inbox: dict[int, AdvertiseKeys]) -> dict[int, KeysBroadcast]:
        u1 = frozenset(inbox)
        self._need(Stage.ADVERTISE_KEYS, u1, self.config.threshold)
        self._keys = {c: m.keys for c, m in inbox.items()}
        seed = graph_seed(self.round_id, self.config, ((c, k.enc_pk, k.mask_pk) for c, k in self._keys.items()))
        self._nbrs = neighbours(u1, self.config, seed)
        self._quorum = self.config.quorum(len(u1))
        keys = [self._keys[c] for c in sorted(u1)]
        return {c: KeysBroadcast(round_id=self.round_id, recipient=c, keys=keys) for c in sorted(u1)}

    def _close_share_keys(self, inbox: dict[int, ShareKeys]) -> dict[int, SharesForward]:
        u2 = frozenset(inbox)
        self._need(Stage.SHARE_KEYS, u2, self.config.threshold)
        self._check_holders(Stage.SHARE_KEYS, u2, u2)
        self._shares = inbox
        out: dict[int, list] = {v: [] for v in u2}
        for u in sorted(u2):
            for e in inbox[u].shares:
                if e.recipient in u2:
                    out[e.recipient].append(e)
        return {v: SharesForward(round_id=self.round_id, recipient=v, shares=out[v]) for v in sorted(u2)}

    def _needs_key(self, alive_inputs: frozenset[int]) -> frozenset[int]:
        """Dropped clients whose pairwise masks are in some survivor's input."""
        gone = self.survivors[Stage.SHARE_KEYS] - alive_inputs
        return frozenset(v for v in gone if self._nbrs[v] & alive_inputs)

    def _close_masked_input(self, inbox: dict[int, MaskedInput]) -> dict[int, ConsistencyRequest]:
        u3 = frozenset(inbox)
        self._need(Stage.MASKED_INPUT, u3, self._quorum)
        self._check_holders(Stage.MASKED_INPUT, u3, u3 | self._needs_key(u3))
        return {c: ConsistencyRequest(round_id=self.round_id, recipient=c, survivors=sorted(u3)) for c in sorted(u3)}

    def _close_consistency(self, inbox: dict[int, ConsistencySignature]) -> dict[int, UnmaskRequest]:
        u3, u4 = self.survivors[Stage.MASKED_INPUT], frozenset(inbox)
        self._need(Stage.CONSISTENCY, u4, self._quorum)
        self._check_holders(Stage.CONSISTENCY, u4, u3 | self._needs_key(u3))
        signatures = [SurvivorSignature(client_id=c, signature=inbox[c].survivors_signature) for c in sorted(u4)]
        u2 = self.survivors[Stage.SHARE_KEYS]
        requests = {}
        for w in sorted(u4):
            dropped = (self._nbrs[w] & u2) - u3
            self._dropped_asked[w] = frozenset(dropped)
            requests[w] = UnmaskRequest(round_id=self.round_id, recipient=w, survivors=sorted(u3),
                                        dropped=sorted(dropped), signatures=signatures)
        return requests

    def _close_unmask(self, inbox: dict[int, UnmaskResponse]) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        u3 = self.survivors[Stage.MASKED_INPUT]
        seeds: dict[int, dict[int, bytes]] = {v: {} for v in u3}
        keys: dict[int, dict[int, bytes]] = {v: {} for v in self._needs_key(u3)}
        for w, msg in inbox.items():
            x = shamir.share_point(w)
            for s in msg.seed_shares:
                seeds[s.owner][x] = s.share
            for s in msg.key_shares:
                if s.owner in keys:
                    keys[s.owner][x] = s.share
        add, subtract = [], []
        for v in sorted(seeds):
            seed = self._reconstruct(v, seeds[v], "self-mask seed")
            if seed_commitment(self.round_id, v, seed) != self._shares[v].seed_commitment:
                raise self._fail(v, "the reconstructed self-mask seed does not match its commitment")
            subtract.append(seed)
        for v in sorted(keys):
            sk = self._reconstruct(v, keys[v], "masking key")
            if crypto.agreement_public(sk) != self._keys[v].mask_pk:
                raise self._fail(v, "the reconstructed masking key does not match its public key")
            pair_seeds = pairwise_keys(sk, v, {w: self._keys[w].mask_pk for w in self._nbrs[v] & u3},
                                       b"pairwise-mask", self.round_id)
            for w, s in pair_seeds.items():
                (subtract if w < v else add).append(s)  # undo what w applied for v
        t1 = time.perf_counter()
        acc = self._acc if self._acc.size else np.zeros(self.config.vector_length, dtype=self.config.dtype)
        apply_masks(acc, add, subtract, algorithm=self.config.prg)
        if self.config.word_mask is not None:
            acc &= self.config.dtype.type(self.config.word_mask)
        t2 = time.perf_counter()
        total = decode(acc, self.config)
        self.timings.update(reconstruct_s=t1 - t0, unmask_s=t2 - t1, decode_s=time.perf_counter() - t2,
                            unmask_stage_cpu_s=time.process_time() - c0, masks=len(add) + len(subtract))
        self._acc = np.zeros(0, dtype=self.config.dtype)
        self._result = AggregateResult(total=total, encoded_total=acc, survivors=tuple(sorted(u3)),
                                       dropped=tuple(sorted(set(self.participants) - u3)))
        self.done = True
        return {}

    def _reconstruct(self, owner: int, shares: dict[int, bytes], what: str) -> bytes:
        try:
            return shamir.reconstruct(shares, self.config.threshold)
        except InsufficientSharesError:
            raise self._abort(Stage.UNMASK, f"{len(shares)} shares of the {what} of client {owner}, "
                                            f"{self.config.threshold} needed", owner)
        except ValueError as exc:
            raise self._fail(owner, f"its {what} shares are inconsistent: {exc}")

    def _fail(self, owner: int, message: str) -> ReconstructionError:
        err = ReconstructionError(message + "; the round is aborted", stage=Stage.UNMASK.value, client=owner)
        self.abort_reason = str(err)
        return err
