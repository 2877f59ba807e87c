"""A site's side of secure aggregation: the protocol's stages, and the masked update it releases.

The server drives the round (`fedmed.fl.server.secure`); the site answers:

    query.secagg  Setup + the round transcript             -> AdvertiseKeys   a new ClientSession
    query.secagg  KeysBroadcast                            -> ShareKeys
    train         global vector, instructions, SharesForward -> MaskedInput + metrics (no plain update)
    query.secagg  ConsistencyRequest                       -> ConsistencySignature
    query.secagg  UnmaskRequest                            -> UnmaskResponse

At the setup the site checks the round transcript (`fedmed.fl.wire.transcript`) before it advertises
any key: it names this site's roster and the setup's participants and config; the session id
commits to it; the config is the one the instructions' section makes for these participants; the
instructions pass the site's admission (policy, privacy budget) with the real participant count and
the weighting rule; the session id is new to the site and no earlier release could be differenced
against this one (`fedmed.fl.site.releases`). The session then runs under the transcript's session
id, so the keys of a peer that was told anything else do not verify. A train message of a secure
round must carry exactly the transcript's instructions and global vector (`SecureRelease.prepare`,
which names every field that differs); after training the site refuses a NaN/Inf update itself
(the server cannot see it), weighs it by the transcript's rule (`pack_weighted`) and sends only
the masked vector. Before it signs the survivors, and again before it reveals any share, it checks
that they are at least its policy's `min_clients` and that no earlier sum from the same global
model over other sites could be differenced against this one; signing, it remembers the sum. The session's secrets live
in the node's `Context.state` between messages: at the site (its SuperNode), never sent. The
identity key and the roster are the site's own files (`SiteSettings.identity`, `.roster`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from pydantic import ValidationError

from fedmed.fl.enrolment import Roster, load_identity
from fedmed.fl.site.admission import admit_round
from fedmed.fl.site.releases import ReleaseMemory, ReleaseRefused
from fedmed.fl.site.session import SiteSession
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.messages import SECAGG_KEY
from fedmed.fl.wire.secagg import StageMissingError, masked_words, round_config, stage_bytes, stage_record
from fedmed.fl.wire.transcript import RoundTranscript, differences
from secure_agg import (
    ClientSession,
    ConfigError,
    ForgedMessageError,
    KeyPair,
    Progress,
    SecAggError,
    pack_weighted,
    parse,
)
from secure_agg.messages import ConsistencyRequest, MaskedInput, Message, Setup, SharesForward, UnmaskRequest

logger = logging.getLogger("fedmed.fl.site")

STATE = "fedmed-secagg"  # Context.state ConfigRecord: session (bytes), transcript (JSON)


@dataclass(frozen=True)
class Enrolment:
    """A site's identity key, its roster and its client id in that roster."""

    identity: KeyPair
    roster: Roster
    client_id: int


def enrolment(session: SiteSession) -> Enrolment:
    """The site's enrolment from its own files, or the audited refusal saying what is missing."""
    settings = session.settings
    if not settings.identity or not settings.roster:
        raise session.refuse("this site has no identity key and roster for secure aggregation "
                             "(fedmed client --identity KEY --roster ROSTER)", [])
    identity, roster = session.runtime.enrolment(settings.identity, settings.roster)
    client_id = roster.id_of(identity.public)
    if client_id is None:
        raise session.refuse(f"{settings.identity}: this site's public key is not in the roster {settings.roster}", [])
    return Enrolment(identity, roster, client_id)


def hello_identity(settings: SiteSettings) -> str:
    """What a site says of itself in its hello: its public identity key (hex), if it has one."""
    return load_identity(settings.identity).public.hex() if settings.identity else ""


def _context(session: SiteSession) -> Context:
    if session.context is None:
        raise session.refuse("secure aggregation needs the node's Context to keep its session", [])
    return session.context


def _stage(session: SiteSession, content: RecordDict, what: str) -> Message:
    try:
        return parse(stage_bytes(content, what))
    except (StageMissingError, SecAggError) as error:
        raise session.refuse(f"{what}: {error}", [str(error)]) from None


def _restore(session: SiteSession, who: Enrolment) -> tuple[ClientSession, RoundTranscript]:
    context = _context(session)
    if STATE not in context.state:
        raise session.refuse("no secure-aggregation session: the key stages of this round never reached the site", [])
    state = context.state[STATE]
    transcript = RoundTranscript.model_validate_json(str(state["transcript"]))
    session.round, session.transcript = transcript.round, transcript
    return ClientSession.restore(bytes(state["session"]), who.identity.private), transcript


def releases(session: SiteSession) -> ReleaseMemory:
    """The site's release memory, or the refusal of a site that has nowhere to keep one."""
    if session.state_dir is None:
        raise session.refuse("secure aggregation needs the site's state directory: it remembers there what it "
                             "released, so a round cannot be replayed against it", [])
    return session.runtime.releases(session.state_dir)


def _save(context: Context, client: ClientSession, transcript: RoundTranscript) -> None:
    context.state[STATE] = ConfigRecord({"session": client.export_state(), "transcript": transcript.model_dump_json()})


def _transcript(session: SiteSession, content: RecordDict, setup: Setup, who: Enrolment) -> RoundTranscript:
    """The setup's round transcript, checked against the setup itself and the site's own enrolment."""
    try:
        transcript = RoundTranscript.from_content(content)
    except (KeyError, TypeError, ValidationError) as error:
        raise session.refuse(f"the secure-aggregation setup carries no valid round transcript: {error}", []) from None
    session.round = transcript.round
    problems = []
    if transcript.roster != who.roster.digest:
        problems.append(f"the server's roster differs from this site's ({session.settings.roster}, digest "
                        f"{who.roster.digest[:12]}...): both must hold the same enrolment")
    if setup.round_id != transcript.session_id:
        problems.append("the setup's session id does not commit to the round transcript")
    if setup.config != transcript.config:
        problems.append("the setup's secure-aggregation config is not the transcript's")
    if tuple(sorted(setup.participants)) != transcript.participants:
        problems.append(f"the setup names participants {sorted(setup.participants)}, the transcript "
                        f"{list(transcript.participants)}")
    if who.client_id not in transcript.participants:
        problems.append(f"this site (client {who.client_id}) is not among the participants")
    if transcript.instructions.round != transcript.round:
        problems.append(f"the instructions are for round {transcript.instructions.round}, the transcript for "
                        f"round {transcript.round}")
    if transcript.weighting.rule != transcript.instructions.secure_aggregation.weighting:
        problems.append(f"the transcript weighs by {transcript.weighting.rule!r}, the instructions by "
                        f"{transcript.instructions.secure_aggregation.weighting!r}")
    if transcript.instructions.num_clients != len(transcript.participants):
        problems.append(f"the instructions announce {transcript.instructions.num_clients} sites, the transcript "
                        f"names {len(transcript.participants)} participants")
    if problems:
        raise session.refuse("the secure-aggregation setup is inconsistent: " + "; ".join(problems), problems)
    session.transcript = transcript
    return transcript


def _admit_setup(session: SiteSession, transcript: RoundTranscript) -> None:
    """The transcript's round against the site's policy and memory, before any key is advertised."""
    session.prepare(transcript.instructions)
    section = transcript.instructions.secure_aggregation
    try:
        expected = round_config(section, num_clients=len(transcript.participants),
                                vector_length=session.layout.numel + 1)
    except ConfigError as error:
        raise session.refuse(f"the round's secure aggregation cannot run as announced: {error}", [str(error)]) from None
    if expected != transcript.config:
        fields = differences(expected.model_dump(mode="json"), transcript.config.model_dump(mode="json"))
        raise session.refuse("the round's secure-aggregation config is not the one its announced section makes "
                             f"for {len(transcript.participants)} participants: {', '.join(fields)} differ", fields)
    admit_round(session)
    memory = releases(session)
    try:
        memory.admit_session(transcript.roster, transcript.session_id, global_sha256=transcript.global_sha256,
                             participants=transcript.participants, dp=_charged(session, transcript))
    except ReleaseRefused as error:
        raise session.refuse(str(error), [str(error)]) from None


def protocol_refusal(error: SecAggError) -> str:
    """A protocol violation as the site's refusal: what broke, and what a forged peer key means here."""
    reason = f"secure aggregation stopped: {error}"
    if isinstance(error, ForgedMessageError):
        reason += (" (every signature of the round commits to the round transcript: a peer that was told another "
                   "round, other instructions, weights or global model signed another one)")
    return reason


def _charged(session: SiteSession, transcript: RoundTranscript) -> bool:
    """Whether a repeat of this sum would cost the site budget: a DP round under a capped ledger (a DP
    round without a cap could be repeated for free, so it counts as not private here)."""
    capped = session.policy is not None and session.policy.privacy.max_epsilon is not None
    return transcript.instructions.privacy.mode != "none" and capped


def _agree_to_sum(session: SiteSession, message: Message, transcript: RoundTranscript) -> None:
    """Before signing the survivors (and remembering the sum) or revealing a share: enough of them
    for the policy, and no sum of other sites from the same start before (`ReleaseRefused`)."""
    if not isinstance(message, (ConsistencyRequest, UnmaskRequest)):
        return
    survivors = tuple(sorted(message.survivors))
    needed = session.policy.secure_aggregation.min_clients if session.policy is not None else 2
    reasons = [] if len(survivors) >= needed else [
        f"{len(survivors)} sites are in the secure sum; this site needs at least {needed} "
        "(its policy's secure_aggregation.min_clients) before it signs or reveals anything"]
    memory = releases(session)
    try:
        memory.check_sum(transcript.roster, global_sha256=transcript.global_sha256, survivors=survivors,
                         dp=_charged(session, transcript))
    except ReleaseRefused as error:
        reasons.append(str(error))
    session.decide("survivors", reasons)
    if reasons:
        raise session.refuse("; ".join(reasons), reasons)


def answer_stage(session: SiteSession, content: RecordDict) -> ArrayRecord:
    """Answer one `query.secagg` message (any stage but the masked input, which the train reply
    carries): the reply's protocol message."""
    context, who = _context(session), enrolment(session)
    message = _stage(session, content, "the query.secagg message")
    if isinstance(message, SharesForward):
        raise session.refuse("the masked input is sent with the train reply, not on its own", [])
    if isinstance(message, Setup):
        transcript = _transcript(session, content, message, who)
        _admit_setup(session, transcript)
        client = ClientSession(who.client_id, who.identity.private, who.roster.ids, round_id=transcript.session_id)
    else:
        client, transcript = _restore(session, who)
        _agree_to_sum(session, message, transcript)
    try:
        reply = client.handle(message)
    except SecAggError as error:  # the server broke the protocol: the session is aborted, nothing is revealed
        raise session.refuse(protocol_refusal(error), [str(error)]) from error
    finally:  # an aborted session stays aborted
        _save(context, client, transcript)
    if isinstance(message, ConsistencyRequest):  # from its signature on, the server can unmask this sum
        releases(session).record_sum(transcript.roster, session=transcript.session_id,
                                     global_sha256=transcript.global_sha256,
                                     survivors=tuple(sorted(message.survivors)), dp=_charged(session, transcript))
    return stage_record(reply.to_bytes())


class SecureRelease:
    """The masking step of one secure train message, prepared (and checked) before training."""

    def __init__(self, session: SiteSession, client: ClientSession, transcript: RoundTranscript, message: Message):
        self.session, self.client, self.transcript, self.message = session, client, transcript, message

    @classmethod
    def prepare(cls, session: SiteSession, content: RecordDict, start_sha256: str) -> SecureRelease | None:
        """The release of a secure round (None for a plain one); refuses a train message whose stage or
        session is missing, or whose instructions or global vector (`start_sha256`: the `vector_sha256` of
        the one the site loaded) are not the transcript's."""
        if SECAGG_KEY not in content:
            if session.instructions.secure_aggregation.enabled:
                raise session.refuse("the round is announced as secure but the train message carries no "
                                     "secure-aggregation stage; no plain update is sent", [])
            return None
        who = enrolment(session)
        message = _stage(session, content, "the train message")
        client, transcript = _restore(session, who)
        if not (isinstance(message, SharesForward) and message.round_id == transcript.session_id
                and message.recipient == who.client_id and client.progress is Progress.SHARED):
            raise session.refuse("the train message's secure-aggregation stage is not this site's next one (its "
                                 f"session is {client.progress.value}; a masked input is sent once): nothing is "
                                 "trained", [])
        fields = [] if transcript.instructions == session.instructions else [  # equal models dump equal
            "instructions." + f for f in differences(transcript.instructions.model_dump(mode="json"),
                                                     session.instructions.model_dump(mode="json"))]
        if start_sha256 != transcript.global_sha256:
            fields.append("global (the starting model)")
        if fields:
            raise session.refuse("the train message is not the round transcript this site signed: "
                                 f"{', '.join(fields)} differ", fields)
        session.transcript = transcript
        return cls(session, client, transcript, message)

    def seal(self, vector: np.ndarray) -> tuple[ArrayRecord, np.ndarray]:
        """The masked input of `vector` (the site's update [L]): (its stage record, the masked words sent)."""
        session, transcript = self.session, self.transcript
        length = transcript.config.vector_length
        bad = int(np.count_nonzero(~np.isfinite(vector)))
        if bad:
            raise session.refuse(f"the update has {bad} NaN/Inf values; it is not sent", [])
        if vector.shape != (length - 1,):
            raise session.refuse(f"the round masks {length - 1} parameters, this site's update has {vector.shape}", [])
        weighting, clip = transcript.weighting, transcript.config.clip
        packed = pack_weighted(vector, weighting.weight_of(len(session.data.train)), max_weight=weighting.max_weight,
                               clip=clip)
        clipped = int(np.count_nonzero(np.abs(packed[:-1]) > clip))
        if clipped:
            logger.warning("%s: %d of %d weighted update values exceed the clip %g and are clipped", session.party,
                           clipped, vector.size, clip)
        context = _context(session)
        try:
            reply = self.client.handle(self.message, update=packed)
        except SecAggError as error:
            raise session.refuse(protocol_refusal(error), [str(error)]) from error
        finally:
            _save(context, self.client, transcript)
        if not isinstance(reply, MaskedInput):  # pragma: no cover - a SharesForward is answered by a MaskedInput
            raise session.refuse(f"unexpected {type(reply).__name__}", [])
        return stage_record(reply.to_bytes()), masked_words(reply, length)
