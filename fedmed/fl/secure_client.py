"""A site's side of secure aggregation: protocol stages in `query.secagg` messages, the masked
update in the train reply. The server drives the round (`fedmed.fl.secure_server`):

    query.secagg  Setup (+ round, max weight, roster digest) -> AdvertiseKeys   a new ClientSession
    query.secagg  KeysBroadcast                            -> ShareKeys
    train         global vector, instructions, SharesForward -> MaskedInput + metrics (no plain update)
    query.secagg  ConsistencyRequest                       -> ConsistencySignature
    query.secagg  UnmaskRequest                            -> UnmaskResponse

At the train stage the site trains, checks its update (hooks), refuses a NaN/Inf one itself (the
server cannot see it), packs it with its weight (`pack_weighted`, weight = training samples) and
sends only the masked vector. The session's secrets live in the node's `Context.state` between
messages: at the site (its SuperNode), never sent. A site masks at most one update per round of a
run, so a server cannot collect two masked sums of the same update over different survivor sets.
The identity key and the roster are the site's own files (`SiteSettings.identity`, `.roster`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedmed.fl.enrolment import Roster, load_identity
from fedmed.fl.protocol import SECAGG_KEY, SECAGG_ROUND, RoundRefused
from secure_agg import ClientSession, ConfigError, KeyPair, SecAggConfig, pack_weighted, parse
from secure_agg.messages import MaskedInput, Setup, SharesForward

if TYPE_CHECKING:
    from fedmed.fl.client_app import SiteContext
    from fedmed.fl.protocol import Instructions
    from fedmed.fl.site import SiteSettings

logger = logging.getLogger("fedmed.fl.client")

STATE = "fedmed-secagg"  # Context.state ConfigRecord: session (bytes), round, max-weight, clip, length, masked
MESSAGE = "message"  # the one array of a stage record: the secure_agg wire bytes as uint8

Seal = Callable[["SiteContext", "Instructions", np.ndarray], "tuple[str, ArrayRecord, np.ndarray]"]


class SecureRoundRefused(RoundRefused):
    """The site will not take part in a secure round as asked (its reply is a refusal saying why)."""


def stage_record(data: bytes) -> ArrayRecord:
    return ArrayRecord({MESSAGE: Array(np.frombuffer(data, dtype=np.uint8))})


def stage_bytes(content: RecordDict, what: str) -> bytes:
    """The secure_agg message in `content`, or `SecureRoundRefused` naming `what` lacks it."""
    record = content.get(SECAGG_KEY) if isinstance(content, RecordDict) else None
    if not isinstance(record, ArrayRecord) or MESSAGE not in record:
        raise SecureRoundRefused(f"{what} carries no secure-aggregation message")
    return record[MESSAGE].numpy().tobytes()


@dataclass(frozen=True)
class Enrolment:
    """A site's identity key, its roster and its client id in that roster."""

    identity: KeyPair
    roster: Roster
    client_id: int

    @classmethod
    def of(cls, settings: SiteSettings) -> Enrolment:
        if not settings.identity or not settings.roster:
            raise SecureRoundRefused("this site has no identity key and roster for secure aggregation "
                                     "(fedmed client --identity KEY --roster ROSTER)")
        identity, roster = load_identity(settings.identity), Roster.load(settings.roster)
        client_id = roster.id_of(identity.public)
        if client_id is None:
            raise SecureRoundRefused(f"{settings.identity}: this site's public key is not in the roster "
                                     f"{settings.roster}")
        return cls(identity, roster, client_id)


def hello_fields(settings: SiteSettings) -> dict[str, str]:
    """What a site adds to its hello: its public identity key (hex), if it has one."""
    return {"identity": load_identity(settings.identity).public.hex()} if settings.identity else {}


def _context(context: Context | None) -> Context:
    if context is None:
        raise SecureRoundRefused("secure aggregation needs the node's Context to keep its session")
    return context


def _restore(context: Context, enrolment: Enrolment) -> tuple[ClientSession, dict]:
    if STATE not in context.state:
        raise SecureRoundRefused("no secure-aggregation session: the key stages of this round never reached the site")
    state = dict(context.state[STATE])
    return ClientSession.restore(bytes(state.pop("session")), enrolment.identity.private), state


def _save(context: Context, session: ClientSession, info: dict) -> None:
    context.state[STATE] = ConfigRecord({"session": session.export_state(), **info})


def handle_stage(settings: SiteSettings, check_config: Callable[[SiteSettings, SecAggConfig], None],
                 content: RecordDict, context: Context | None) -> RecordDict:
    """Answer one `query.secagg` message (any stage but the masked input, which `secure_seal` sends)."""
    context, enrolment = _context(context), Enrolment.of(settings)
    message = parse(stage_bytes(content, "the query.secagg message"))
    if isinstance(message, SharesForward):
        raise SecureRoundRefused("the masked input is sent with the train reply, not on its own")
    if isinstance(message, Setup):
        info = content.get(SECAGG_ROUND)
        if not isinstance(info, ConfigRecord) or info.get("roster") != enrolment.roster.digest:
            raise SecureRoundRefused(f"the server's roster differs from this site's ({settings.roster}, digest "
                                     f"{enrolment.roster.digest[:12]}...): both must hold the same enrolment")
        session = ClientSession(enrolment.client_id, enrolment.identity.private, enrolment.roster.ids,
                                round_id=message.round_id, accept_config=lambda config: check_config(settings, config))
        previous = dict(context.state[STATE]) if STATE in context.state else {}
        state = {"round": int(info["round"]), "max-weight": float(info["max-weight"]), "clip": message.config.clip,
                 "length": message.config.vector_length, "masked": int(previous.get("masked", 0))}
    else:
        session, state = _restore(context, enrolment)
    try:
        reply = session.handle(message)
    except ConfigError as error:  # the site's own check of the round's config: a refusal, with its reason
        raise SecureRoundRefused(str(error)) from error
    finally:  # an aborted session stays aborted
        _save(context, session, state)
    return RecordDict({SECAGG_KEY: stage_record(reply.to_bytes())})


def secure_seal(settings: SiteSettings, content: RecordDict, context: Context | None,
                instructions: Instructions) -> Seal | None:
    """The train reply's sealing step for a secure round (None for a plain round), checked before
    training: the stage message and the session must be there."""
    if SECAGG_KEY not in content:
        if instructions.secure_aggregation.get("enabled"):
            raise SecureRoundRefused("the round is announced as secure but the train message carries no "
                                     "secure-aggregation stage; no plain update is sent")
        return None
    context, enrolment = _context(context), Enrolment.of(settings)
    message = parse(stage_bytes(content, "the train message"))
    session, state = _restore(context, enrolment)
    if state["round"] != instructions.round:
        raise SecureRoundRefused(f"the secure-aggregation session is for round {state['round']}, "
                                 f"the training for round {instructions.round}")
    if state["masked"] >= instructions.round:
        raise SecureRoundRefused(f"this site already sent a masked update for round {state['masked']}; a second "
                                 "one, summed over other survivors, could reveal it")

    def seal(site: SiteContext, _instructions: Instructions, vector: np.ndarray) -> tuple[str, ArrayRecord, np.ndarray]:
        bad = int(np.count_nonzero(~np.isfinite(vector)))
        if bad:
            raise SecureRoundRefused(f"the update has {bad} NaN/Inf values; it is not sent")
        if vector.shape != (state["length"] - 1,):
            raise SecureRoundRefused(f"the round masks {state['length'] - 1} parameters, this site's update has "
                                     f"{vector.shape}")
        packed = pack_weighted(vector, len(site.data.train), max_weight=state["max-weight"], clip=state["clip"])
        clipped = int(np.count_nonzero(np.abs(packed[:-1]) > state["clip"]))
        if clipped:
            logger.warning("%s: %d of %d weighted update values exceed the clip %g and are clipped", site.data.name,
                           clipped, vector.size, state["clip"])
        try:
            reply = session.handle(message, update=packed)
        except BaseException:
            _save(context, session, state)
            raise
        _save(context, session, {**state, "masked": instructions.round})
        if not isinstance(reply, MaskedInput):  # pragma: no cover - a SharesForward is answered by a MaskedInput
            raise SecureRoundRefused(f"unexpected {type(reply).__name__}")
        words = np.frombuffer(reply.data, dtype=f"<u{len(reply.data) // state['length']}")
        return SECAGG_KEY, stage_record(reply.to_bytes()), words

    return seal
