"""A site's message handlers: each message is one pass down its steps, with one `SiteSession`.

    train:     admission -> (masking prepared) -> training -> release -> masking -> reply
    evaluate:  the global model on the site's validation split
    hello:     who the site is (`SiteHello`)
    secagg:    a secure-aggregation stage (`fedmed.fl.site.masking`)

After every message, whatever happened, its audit entries are written before the reply goes out
(`fedmed.fl.site.journal`). A step may decline the round by raising `RoundRefused`: the reply is
then a `refusal` record saying why. Each step is called once, in this order, and hands what it
decided to the next through the session; none calls back up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Context, MetricRecord, RecordDict

from fedmed import __version__
from fedmed.fl.site import training
from fedmed.fl.site.admission import admit_round
from fedmed.fl.site.journal import journal
from fedmed.fl.site.masking import SecureRelease, answer_stage, hello_identity
from fedmed.fl.site.release import release
from fedmed.fl.site.runtime import SiteRuntime
from fedmed.fl.site.session import MessageKind, SiteSession
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import pack, read_vector
from fedmed.fl.wire.messages import GLOBAL, LAYOUT_KEY, METRICS, REFUSAL, SECAGG_KEY, UPDATE, RoundRefused, SiteHello
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
    return SiteHello(name=data.name, num_train=len(data.train), num_val=len(data.val), num_classes=data.num_classes,
                     class_names=tuple(data.class_names), normalisation=normalisation_of(data),
                     layout=session.layout.digest, fedmed=__version__,
                     identity=hello_identity(session.settings)).record()


def train(session: SiteSession, content: RecordDict) -> RecordDict:
    session.prepare(Instructions.from_content(content))
    privacy = admit_round(session)
    start = _load_global(session, content)
    secure = SecureRelease.prepare(session, content, start)
    result = training.train_round(session, privacy, start)
    update = training.local_update(session, start)
    metrics = release(session, privacy, masked=secure is not None)
    if secure is not None:
        key, (payload, _words) = SECAGG_KEY, secure.seal(update)
    else:
        key, payload = UPDATE, pack(update)
    logger.info("%s: round %d trained on %d samples, loss %.4f", session.party, session.round,
                len(session.data.train), result.loss)
    return RecordDict({
        key: payload, LAYOUT_KEY: session.layout.record(),
        METRICS: MetricRecord({"num-examples": len(session.data.train), "train-loss": float(result.loss),
                               "steps": result.steps, **metrics}),
    })


def evaluate(session: SiteSession, content: RecordDict) -> RecordDict:
    """The global model on the site's validation split, as inference would run it (no prompt); a
    model trained with boxes is also scored with boxes cut from the ground truth, in its own field."""
    session.prepare(Instructions.from_content(content))
    _load_global(session, content)
    data, device = session.data, resolve_device(session.settings.device)
    batch = session.instructions.training.batch_size
    result = validate(session.model, data.val, class_names=data.class_names, prompt="none", batch_size=batch,
                      device=device)
    metrics = {"dice": result.dice, "loss": result.loss, "cases": result.cases, "num-examples": result.samples,
               **{f"dice/{name}": value for name, value in result.per_class.items()}}
    if DEFAULT_PROMPT[session.instructions.model.method] == "box":
        oracle = validate(session.model, data.val, class_names=data.class_names, prompt="oracle-boxes",
                          batch_size=batch, device=device)
        metrics["dice-oracle-boxes"] = oracle.dice
    session.model.to("cpu")
    return RecordDict({METRICS: MetricRecord({k: float(v) if isinstance(v, float) else v for k, v in metrics.items()})})


STEPS: dict[MessageKind, Callable[[SiteSession, RecordDict], RecordDict]] = {
    "hello": hello, "train": train, "evaluate": evaluate, "secure aggregation": answer_stage,
}


def handle(kind: MessageKind, content: RecordDict, *, settings: SiteSettings, runtime: SiteRuntime,
           context: Context | None) -> RecordDict:
    """Answer one message of `kind` (content in, content out); its audit entries are written first."""
    session = SiteSession(settings, runtime, context, kind)
    reply, error = None, None
    try:
        reply = STEPS[kind](session, content)
    except RoundRefused as refusal:
        reply = RecordDict({REFUSAL: refusal.record()})
    except BaseException as raised:
        error = raised
        raise
    finally:
        journal(session, content, reply, error)
    return reply
