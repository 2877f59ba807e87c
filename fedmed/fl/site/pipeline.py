"""A site's message handlers: each message is one pass down its steps, with one `SiteSession`.

    train:     admission -> (masking prepared) -> training -> release -> masking -> reply
    evaluate:  the global model on the site's validation split
    hello:     who the site is (`SiteHello`)
    secagg:    a secure-aggregation stage (`fedmed.fl.site.masking`)

After every message, whatever happened, its audit entries are written before the reply goes out
(`fedmed.fl.site.journal`), the server's log head the message carries among them, and the reply
carries the site's log head after them, where its manifest names `audit_head`. A step may decline the round by raising `RoundRefused`: the reply is
then a `refusal` record saying why. Each step is called once, in this order, and hands what it
decided to the next through the session; none calls back up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Context, RecordDict

from fedmed import __version__
from fedmed.fl.site import training
from fedmed.fl.site.admission import admit_evaluation, admit_round
from fedmed.fl.site.journal import journal, witness_server
from fedmed.fl.site.masking import SecureRelease, answer_stage, hello_identity
from fedmed.fl.site.release import outgoing, release
from fedmed.fl.site.runtime import SiteRuntime
from fedmed.fl.site.session import MessageKind, SiteSession
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import pack, read_vector
from fedmed.fl.wire import replies
from fedmed.fl.wire.messages import GLOBAL, REFUSAL, SECAGG_KEY, UPDATE, RoundRefused, SiteHello
from fedmed.fl.wire.transcript import vector_sha256
from fedmed.inference.card import normalisation_of
from fedmed.models import DEFAULT_PROMPT, load_trainable_state
from fedmed.train import resolve_device
from fedmed.train.evaluate import validate

logger = logging.getLogger("fedmed.fl.site")


def _load_global(session: SiteSession, content: RecordDict) -> np.ndarray:
    """Put the server's global tensors into the session's model; returns the flat global vector."""
    vector = read_vector(content, GLOBAL, session.layout)
    load_trainable_state(session.model, session.layout.unflatten(vector))
    return vector


def hello(session: SiteSession, content: RecordDict) -> RecordDict:
    session.prepare(Instructions.from_content(content), own_classes=True)
    data = session.data
    fields = {"name": data.name, "num_train": len(data.train), "num_val": len(data.val),
              "num_classes": data.num_classes, "class_names": tuple(data.class_names),
              "normalisation": normalisation_of(data), "layout": session.layout.digest, "fedmed": __version__,
              "identity": hello_identity(session.settings)}
    return SiteHello(**outgoing(session, fields)).record()


def train(session: SiteSession, content: RecordDict) -> RecordDict:
    session.prepare(Instructions.from_content(content))
    privacy = admit_round(session)
    start = _load_global(session, content)
    start_sha256 = vector_sha256(start)  # hashed once: the transcript's check and the training seed
    secure = SecureRelease.prepare(session, content, start_sha256)
    result = training.train_round(session, privacy, start_sha256)
    update = training.local_update(session, start)
    budget = release(session, privacy, masked=secure is not None)
    if secure is not None:
        update_record, _words = secure.seal(update)
        update_field = (SECAGG_KEY, update_record)
    else:
        update_field = (UPDATE, pack(update))
    logger.info("%s: round %d trained on %d samples, loss %.4f", session.party, session.round,
                len(session.data.train), result.loss)
    return replies.content(outgoing(session, {
        "update": update_field, "layout": session.layout.record(), "num_examples": len(session.data.train),
        "train_loss": float(result.loss), "steps": result.steps, **budget}))


def evaluate(session: SiteSession, content: RecordDict) -> RecordDict:
    """The global model on the site's validation split, as inference would run it (no prompt); a
    model trained with boxes is also scored with boxes cut from the ground truth, in its own field.
    Admitted like training (`admit_evaluation`); a global model is scored once (asked again, the
    site sends the answer it kept: `fedmed.fl.site.releases`)."""
    session.prepare(Instructions.from_content(content))
    start = _load_global(session, content)
    admit_evaluation(session)
    memory = session.runtime.releases(session.state_dir) if session.state_dir is not None else None
    digest = vector_sha256(start)
    if memory is not None and (kept := memory.evaluation(digest)) is not None:
        return replies.content(kept)
    data, device = session.data, resolve_device(session.settings.device)
    batch = session.instructions.training.batch_size
    result = validate(session.model, data.val, class_names=data.class_names, prompt="none", batch_size=batch,
                      device=device)
    fields = {"dice": result.dice, "dice_per_class": result.per_class, "loss": result.loss, "cases": result.cases,
              "num_examples": result.samples}
    if DEFAULT_PROMPT[session.instructions.model.method] == "box":
        fields["dice_oracle_boxes"] = validate(session.model, data.val, class_names=data.class_names,
                                               prompt="oracle-boxes", batch_size=batch, device=device).dice
    session.model.to("cpu")
    answer = outgoing(session, fields)
    if memory is not None:
        memory.remember_evaluation(digest, answer)
    return replies.content(answer)


def secure_stage(session: SiteSession, content: RecordDict) -> RecordDict:
    return replies.content(outgoing(session, {"protocol": answer_stage(session, content)}))


STEPS: dict[MessageKind, Callable[[SiteSession, RecordDict], RecordDict]] = {
    "hello": hello, "train": train, "evaluate": evaluate, "secure aggregation": secure_stage,
}


def handle(kind: MessageKind, content: RecordDict, *, settings: SiteSettings, runtime: SiteRuntime,
           context: Context | None) -> RecordDict:
    """Answer one message of `kind` (content in, content out); its audit entries are written first."""
    session = SiteSession(settings, runtime, context, kind)
    reply, error, head = None, None, None
    try:
        witness_server(session, content)
        reply = STEPS[kind](session, content)
    except RoundRefused as refusal:
        reply = RecordDict({REFUSAL: refusal.record()})
    except BaseException as raised:
        error = raised
        raise
    finally:
        head = journal(session, content, reply, error)
    if head is not None and outgoing(session, {"audit_head": head}):
        reply = replies.with_head(reply, head)
    return reply
