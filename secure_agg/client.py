"""The client side of the protocol: a state machine fed one server message per stage.

    session = ClientSession(my_id, identity_private_key, roster, round_id="run-7/round-3")
    reply = session.handle(setup_bytes)                    # -> AdvertiseKeys
    reply = session.handle(keys_bytes)                     # -> ShareKeys
    reply = session.handle(shares_bytes, update=vector)    # -> MaskedInput
    reply = session.handle(consistency_bytes)              # -> ConsistencySignature
    reply = session.handle(unmask_bytes)                   # -> UnmaskResponse

``roster`` maps every client id to its Ed25519 public key and must come from the client's own
trusted configuration (enrolment), never from the server: it is what stops the server from
inventing clients. ``round_id`` must be unique per round (for example ``"<run id>/<round>"``).

A message for the wrong round, recipient or stage is refused (:class:`ReplayError`,
:class:`StageError`, :class:`MalformedMessageError`) and leaves the session as it was. A message
whose content is wrong (a forged key or ciphertext, a contradiction, a request to reveal too
much, too few survivors) aborts the session: it raises, and every later message is refused.
A client reveals shares only after verifying at least ``quorum`` signatures on one survivor
set, and never reveals both shares of one peer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from enum import Enum

import numpy as np
from pydantic import BaseModel, ConfigDict

from . import crypto, shamir
from .config import SecAggConfig
from .crypto import CryptoError, u64
from .encoding import encode
from .errors import (
    ConfigError,
    ConsistencyError,
    DoubleRevealError,
    ForgedMessageError,
    MalformedMessageError,
    ProtocolError,
    ReplayError,
    SecAggError,
    StageError,
    TooFewSurvivorsError,
)
from .graph import graph_seed, neighbours
from .messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    KeysBroadcast,
    MaskedInput,
    ServerMessage,
    Setup,
    ShareItem,
    ShareKeys,
    SharesForward,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
    keys_payload,
    parse,
    seed_commitment,
    survivors_payload,
)
from .pairing import SHARE_PLAINTEXT_BYTES, pairwise_keys, share_aad
from .prg import apply_masks


class Progress(str, Enum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"
    ABORTED = "aborted"


_EXPECTS: dict[Progress, type[ServerMessage]] = {
    Progress.NEW: Setup,
    Progress.ADVERTISED: KeysBroadcast,
    Progress.SHARED: SharesForward,
    Progress.MASKED: ConsistencyRequest,
    Progress.SIGNED: UnmaskRequest,
}


class ClientState(BaseModel):
    """Everything a session must remember between stages. Secret: keep it at the site."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")
    client_id: int
    round_id: str
    roster: dict[int, bytes]
    progress: Progress = Progress.NEW
    abort_reason: str | None = None
    config: SecAggConfig | None = None
    participants: list[int] = []
    enc_sk: bytes = b""
    mask_sk: bytes = b""
    seed: bytes = b""
    keys: dict[int, SignedKeys] = {}  # U1, including this client
    neighbours: list[int] = []
    quorum: int = 0
    held: dict[int, list[bytes]] = {}  # owner -> [seed share, key share]; owners are U2 and self
    signed_survivors: list[int] | None = None
    revealed: dict[int, str] = {}  # owner -> "seed" or "key"


class ClientSession:
    """One client's part in one round. See the module docstring for the flow and the rules."""

    def __init__(
        self,
        client_id: int,
        identity_key: bytes,
        roster: Mapping[int, bytes],
        *,
        round_id: str,
        accept_config: Callable[[SecAggConfig], None] | None = None,
        _state: ClientState | None = None,
    ):
        if client_id not in roster:
            raise ConfigError(f"client {client_id} is not in its own roster")
        if crypto.identity_public(identity_key) != roster[client_id]:
            raise ConfigError(f"the identity key of client {client_id} does not match its roster entry")
        self._identity = identity_key
        self._accept_config = accept_config
        self._state = _state or ClientState(client_id=client_id, round_id=round_id, roster=dict(roster))
        self._update: np.ndarray | None = None
        self.timings: dict[str, float] = {}

    # -- state ------------------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        return self._state.client_id

    @property
    def progress(self) -> Progress:
        return self._state.progress

    @property
    def abort_reason(self) -> str | None:
        return self._state.abort_reason

    def export_state(self) -> bytes:
        """The session state as bytes (contains private keys and shares: keep it local)."""
        return self._state.model_dump_json().encode()

    @classmethod
    def restore(
        cls, state: bytes, identity_key: bytes, *, accept_config: Callable[[SecAggConfig], None] | None = None
    ) -> ClientSession:
        st = ClientState.model_validate_json(state)
        return cls(st.client_id, identity_key, st.roster, round_id=st.round_id, accept_config=accept_config, _state=st)

    def set_input(self, update: np.ndarray) -> None:
        """The flat float vector to aggregate (may also be passed to :meth:`handle`)."""
        self._update = update

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, message: ServerMessage | bytes, *, update: np.ndarray | None = None) -> ClientMessage:
        """Process one server message and return the signed reply to send back."""
        msg = parse(message) if not isinstance(message, ServerMessage) else message
        if not isinstance(msg, ServerMessage):
            raise MalformedMessageError(f"a client does not accept a {type(msg).__name__}", stage=msg.stage.value)
        st = self._state
        stage = msg.stage.value
        if msg.recipient != st.client_id:
            raise MalformedMessageError(f"addressed to client {msg.recipient}, not to {st.client_id}", stage=stage)
        if msg.round_id != st.round_id:
            raise ReplayError(f"message of round {msg.round_id!r}; this session is round {st.round_id!r}", stage=stage)
        if st.progress is Progress.ABORTED:
            raise StageError(f"the session was aborted: {st.abort_reason}", stage=stage)
        expected = _EXPECTS.get(st.progress)
        if expected is None:
            raise ReplayError("the round is over for this client", stage=stage)
        if type(msg) is not expected:
            if msg.STAGE.index < expected.STAGE.index:
                raise ReplayError(f"stage {stage} was already processed", stage=stage)
            raise StageError(f"expected a {expected.__name__} (stage {expected.STAGE.value}), got a "
                             f"{type(msg).__name__}", stage=stage)
        handler = {
            Setup: self._on_setup,
            KeysBroadcast: self._on_keys,
            SharesForward: self._on_shares,
            ConsistencyRequest: self._on_consistency,
            UnmaskRequest: self._on_unmask,
        }[type(msg)]
        if isinstance(msg, SharesForward):
            update = self._update if update is None else update
            if update is None:
                raise StageError("the masked-input stage needs the update vector (pass update=)", stage=stage)
            encoded = self._encode(update)  # a bad update is the caller's error: the session is unchanged
            reply = self._guard(lambda: handler(msg, encoded), stage)
        else:
            reply = self._guard(lambda: handler(msg), stage)
        return reply.signed(self._identity)

    def _guard(self, run: Callable[[], ClientMessage], stage: str) -> ClientMessage:
        try:
            return run()
        except SecAggError as exc:
            self._state.progress = Progress.ABORTED
            self._state.abort_reason = str(exc)
            if isinstance(exc, ProtocolError) and exc.stage is None:
                exc.stage = stage
            raise

    def _encode(self, update: np.ndarray) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.process_time()
        encoded = encode(update, self._state.config)
        self.timings.update(encode_s=time.perf_counter() - t0, encode_cpu_s=time.process_time() - c0)
        return encoded

    # -- stages -----------------------------------------------------------------------------

    def _on_setup(self, msg: Setup) -> AdvertiseKeys:
        st, config = self._state, msg.config
        if self._accept_config is not None:
            try:
                self._accept_config(config)
            except ConfigError:
                raise
            except Exception as exc:  # a site policy may raise anything; it is a refusal all the same
                raise ConfigError(f"the site refuses the round's config: {exc}") from exc
        parts = msg.participants
        if len(set(parts)) != len(parts):
            raise MalformedMessageError("participants are listed twice")
        strangers = sorted(set(parts) - set(st.roster))
        if strangers:
            raise MalformedMessageError(f"participants {strangers} are not in this client's roster")
        if st.client_id not in parts:
            raise MalformedMessageError(f"client {st.client_id} is not among the participants")
        if len(parts) > config.num_clients:
            raise MalformedMessageError(
                f"{len(parts)} participants exceed num_clients={config.num_clients}, the bound the encoding was sized for"
            )
        if len(parts) < config.threshold:
            raise TooFewSurvivorsError(f"{len(parts)} participants, threshold {config.threshold}")
        enc, mask = crypto.generate_agreement_key(), crypto.generate_agreement_key()
        payload = keys_payload(st.round_id, config.digest(), st.client_id, enc.public, mask.public)
        keys = SignedKeys(client_id=st.client_id, enc_pk=enc.public, mask_pk=mask.public,
                          signature=crypto.sign(self._identity, payload))
        st.config, st.participants = config, sorted(parts)
        st.enc_sk, st.mask_sk = enc.private, mask.private
        st.keys = {st.client_id: keys}
        st.progress = Progress.ADVERTISED
        return AdvertiseKeys(round_id=st.round_id, sender=st.client_id, keys=keys)

    def _on_keys(self, msg: KeysBroadcast) -> ShareKeys:
        st, config = self._state, self._state.config
        digest, me = config.digest(), st.client_id
        keys: dict[int, SignedKeys] = {}
        seen_keys: set[bytes] = set()
        for k in msg.keys:
            if k.client_id in keys:
                raise MalformedMessageError(f"keys of client {k.client_id} are listed twice")
            if k.client_id not in st.participants:
                raise MalformedMessageError(f"client {k.client_id} is not a participant", client=k.client_id)
            if not crypto.verify(st.roster[k.client_id], k.signature,
                                 keys_payload(st.round_id, digest, k.client_id, k.enc_pk, k.mask_pk)):
                raise ForgedMessageError("the signature on its public keys does not verify", client=k.client_id)
            if k.enc_pk in seen_keys or k.mask_pk in seen_keys or k.enc_pk == k.mask_pk:
                raise ForgedMessageError("its public keys repeat keys already seen", client=k.client_id)
            seen_keys |= {k.enc_pk, k.mask_pk}
            keys[k.client_id] = k
        if keys.get(me) != st.keys[me]:
            raise ConsistencyError("the broadcast does not carry this client's own keys as sent")
        if len(keys) < config.threshold:
            raise TooFewSurvivorsError(f"{len(keys)} clients advertised keys, threshold {config.threshold}")
        seed_for_graph = graph_seed(st.round_id, config, ((c, k.enc_pk, k.mask_pk) for c, k in keys.items()))
        mine = sorted(neighbours(keys, config, seed_for_graph)[me])
        holders = [me, *mine]
        if len(holders) < config.threshold:
            raise TooFewSurvivorsError(f"{len(holders)} holders for this client's shares, threshold {config.threshold}")
        seed = os.urandom(32)
        points = [shamir.share_point(h) for h in holders]
        seed_shares = shamir.split(seed, points, config.threshold)
        key_shares = shamir.split(st.mask_sk, points, config.threshold)
        enc_keys = pairwise_keys(st.enc_sk, me, {v: keys[v].enc_pk for v in mine}, b"share-encryption", st.round_id)
        out = []
        for v in mine:
            p = shamir.share_point(v)
            plaintext = u64(me) + u64(v) + seed_shares[p] + key_shares[p]
            out.append(EncryptedShares(sender=me, recipient=v,
                                       ciphertext=crypto.seal(enc_keys[v], plaintext, share_aad(st.round_id, me, v))))
        own = shamir.share_point(me)
        st.keys, st.neighbours, st.seed = keys, mine, seed
        st.quorum = config.quorum(len(keys))
        st.held = {me: [seed_shares[own], key_shares[own]]}
        st.progress = Progress.SHARED
        return ShareKeys(round_id=st.round_id, sender=me, shares=out,
                         seed_commitment=seed_commitment(st.round_id, me, seed))

    def _on_shares(self, msg: SharesForward, encoded: np.ndarray) -> MaskedInput:
        st, config, me = self._state, self._state.config, self._state.client_id
        nbrs = set(st.neighbours)
        senders = [e.sender for e in msg.shares]
        for e in msg.shares:
            if e.recipient != me:
                raise MalformedMessageError(f"forwarded shares are addressed to client {e.recipient}", client=e.sender)
            if e.sender not in nbrs:
                raise MalformedMessageError("forwarded shares come from a client that is not a neighbour", client=e.sender)
        if len(set(senders)) != len(senders):
            raise MalformedMessageError("shares forwarded twice")
        enc_keys = pairwise_keys(st.enc_sk, me, {v: st.keys[v].enc_pk for v in senders}, b"share-encryption",
                                 st.round_id)
        held: dict[int, list[bytes]] = {}
        for e in msg.shares:
            try:
                plaintext = crypto.open_sealed(enc_keys[e.sender], e.ciphertext, share_aad(st.round_id, e.sender, me))
            except CryptoError as exc:
                raise ForgedMessageError(f"its encrypted shares do not authenticate: {exc}", client=e.sender) from exc
            if len(plaintext) != SHARE_PLAINTEXT_BYTES or plaintext[:16] != u64(e.sender) + u64(me):
                raise ForgedMessageError("its encrypted shares name other clients", client=e.sender)
            held[e.sender] = [plaintext[16 : 16 + shamir.SHARE_BYTES], plaintext[16 + shamir.SHARE_BYTES :]]
        if len(held) + 1 < config.threshold:
            raise TooFewSurvivorsError(f"shares arrived from {len(held)} neighbours; with this client "
                                       f"{len(held) + 1} < threshold {config.threshold}")
        t0, c0 = time.perf_counter(), time.process_time()
        seeds = pairwise_keys(st.mask_sk, me, {v: st.keys[v].mask_pk for v in held}, b"pairwise-mask", st.round_id)
        add, subtract = [st.seed], []
        for v, s in seeds.items():
            (add if me < v else subtract).append(s)
        apply_masks(encoded, add, subtract, algorithm=config.prg)
        if config.word_mask is not None:
            encoded &= config.dtype.type(config.word_mask)
        self.timings.update(mask_s=time.perf_counter() - t0, mask_cpu_s=time.process_time() - c0,
                            masks=len(add) + len(subtract))
        st.held.update(held)
        st.progress = Progress.MASKED
        self._update = None
        return MaskedInput(round_id=st.round_id, sender=me, data=encoded.astype(encoded.dtype.newbyteorder("<"),
                                                                                 copy=False).tobytes())

    def _on_consistency(self, msg: ConsistencyRequest) -> ConsistencySignature:
        st, me = self._state, self._state.client_id
        u3 = msg.survivors
        if len(set(u3)) != len(u3):
            raise MalformedMessageError("survivors are listed twice")
        if me not in u3:
            raise ConsistencyError("the survivor set leaves out this client, whose masked input was sent")
        unknown = sorted(set(u3) - set(st.keys))
        if unknown:
            raise ConsistencyError(f"survivors {unknown} never advertised keys")
        silent = sorted((set(u3) & set(st.neighbours)) - set(st.held))
        if silent:
            raise ConsistencyError(f"neighbours {silent} are called survivors but never sent this client shares")
        if len(u3) < st.quorum:
            raise TooFewSurvivorsError(f"{len(u3)} survivors, {st.quorum} needed")
        survivors = sorted(u3)
        signature = crypto.sign(self._identity, survivors_payload(st.round_id, st.config.digest(), sorted(st.keys),
                                                                  survivors))
        st.signed_survivors = survivors
        st.progress = Progress.SIGNED
        return ConsistencySignature(round_id=st.round_id, sender=me, survivors_signature=signature)

    def _on_unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        st, me = self._state, self._state.client_id
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        both = sorted(dropped & (survivors | set(st.signed_survivors)))
        if both:
            raise DoubleRevealError(
                f"asked for the key share of client {both[0]}, which is a survivor (its self-mask share is "
                "revealed): both shares together would unmask its input; refusing", client=both[0])
        if len(dropped) != len(msg.dropped):
            raise MalformedMessageError("dropped clients are listed twice")
        if sorted(msg.survivors) != st.signed_survivors:
            raise ConsistencyError("the survivor set differs from the one this client signed")
        for v in sorted(dropped):
            if st.revealed.get(v, "key") != "key":
                raise DoubleRevealError(f"the self-mask share of client {v} was already revealed; "
                                        "refusing its key share", client=v)
            if v == me or v not in st.held:
                raise MalformedMessageError("asked for the key share of a client this client holds none of", client=v)
        reveal_seeds = sorted(survivors & set(st.held))
        for v in reveal_seeds:
            if st.revealed.get(v, "seed") != "seed":
                raise DoubleRevealError(f"the key share of client {v} was already revealed; "
                                        "refusing its self-mask share", client=v)
        payload = survivors_payload(st.round_id, st.config.digest(), sorted(st.keys), st.signed_survivors)
        signers: set[int] = set()
        for s in msg.signatures:
            if s.client_id in signers:
                raise MalformedMessageError("two signatures from one client", client=s.client_id)
            if s.client_id not in survivors or not crypto.verify(st.roster[s.client_id], s.signature, payload):
                raise ForgedMessageError("its signature on the survivor set does not verify (or it is no survivor)",
                                         client=s.client_id)
            signers.add(s.client_id)
        if len(signers) < st.quorum:
            raise TooFewSurvivorsError(f"{len(signers)} signatures on the survivor set, {st.quorum} needed")
        seed_shares = [ShareItem(owner=v, share=st.held[v][0]) for v in reveal_seeds]
        key_shares = [ShareItem(owner=v, share=st.held[v][1]) for v in sorted(dropped)]
        st.revealed.update({v: "seed" for v in reveal_seeds} | {v: "key" for v in dropped})
        st.progress = Progress.DONE
        return UnmaskResponse(round_id=st.round_id, sender=me, seed_shares=seed_shares, key_shares=key_shares)


__all__ = ["ClientSession", "ClientState", "Progress"]
