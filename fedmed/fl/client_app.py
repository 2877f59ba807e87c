"""The site's ClientApp: one pipeline of small steps per round, the same in simulation and deployment.

A train message runs, in order (each a field of `ClientHooks`, a no-op or plain default today):

    (a) check_round(site, instructions)                 refuse instructions the site policy forbids
    (b) train(model, data, train_config, site, instr)   plain local training (DP-SGD drops in here)
        update = local - global (trainable tensors only, flat)
    (c) check_payload(site, instructions, layout, update)   what would leave, against the policy
    (d) protect(site, instructions, update) -> vector    the last change to the update before it is sealed
        seal: a plain round sends `vector`; a secure round packs it with its weight and masks it
        (`fedmed.fl.secure_client`); `sent` is what leaves: the float32 vector, or the masked words
    (e) record(site, instructions, layout, sent)         privacy budget entries; extra reply metrics (epsilon)
    (f) finish(pipeline, content, reply, error)          after every message: its audit entries, then the reply

A hook may raise `RoundRefused` to decline the round: the reply is then a `refusal` record saying why.
The default hooks are every fedmed site's (`fedmed.fl.site_hooks`: policy, DP, audit log).

`query.secagg` messages run the other stages of secure aggregation (`SitePipeline.secagg`); the
site's SecAgg config is checked by `check_secure_config(settings, config)` before it takes part.

Deployment loads `app` below; its site settings come from the SuperNode's own `--node-config`
(`data-dir`, `policy`, `checkpoint`, `device`, `identity-key`, `roster`), which `fedmed client` sets
from its command line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmed import __version__
from fedmed.data import SiteData
from fedmed.fl.plan import derive_seed
from fedmed.fl.protocol import CONFIG, GLOBAL, LAYOUT_KEY, METRICS, REFUSAL, SITE, UPDATE, Instructions, RoundRefused
from fedmed.fl.secure_client import Seal, handle_stage, hello_fields, secure_seal
from fedmed.fl.serde import FLAT, Layout, pack
from fedmed.fl.site import SiteRuntime, SiteSettings, runtime_for
from fedmed.models import SamSegmenter, load_trainable_state, trainable_state
from fedmed.train import TrainConfig, TrainResult, evaluate, resolve_device, train_local
from secure_agg import SecAggConfig

logger = logging.getLogger("fedmed.fl.client")


class GlobalModelError(ValueError):
    """The global tensors a server sent do not fit the model this site built."""


@dataclass(frozen=True)
class SiteContext:
    """What the hooks see of the site: its settings, data and this round's model."""

    settings: SiteSettings
    data: SiteData
    layout: Layout


def _plain_train(model: SamSegmenter, data: SiteData, config: TrainConfig, site: SiteContext,
                 instructions: Instructions) -> TrainResult:
    return train_local(model, data.train, config)


def _nothing(*_args) -> None:
    return None


def _unchanged(_site: SiteContext, _instructions: Instructions, vector: np.ndarray) -> np.ndarray:
    return vector


def _plain_seal(_site: SiteContext, _instructions: Instructions,
                vector: np.ndarray) -> tuple[str, ArrayRecord, np.ndarray]:
    return UPDATE, pack(vector), vector


@dataclass(frozen=True)
class ClientHooks:
    """The replaceable steps of a site's round (see the module docstring for the order)."""

    check_round: Callable[[SiteContext, Instructions], None] = _nothing
    train: Callable[[SamSegmenter, SiteData, TrainConfig, SiteContext, Instructions], TrainResult] = _plain_train
    check_payload: Callable[[SiteContext, Instructions, Layout, np.ndarray], None] = _nothing
    protect: Callable[[SiteContext, Instructions, np.ndarray], np.ndarray] = _unchanged
    record: Callable[[SiteContext, Instructions, Layout, np.ndarray], dict[str, float] | None] = _nothing
    check_secure_config: Callable[[SiteSettings, SecAggConfig], None] = _nothing
    finish: Callable[[SitePipeline, RecordDict, RecordDict | None, BaseException | None], None] = _nothing


@dataclass
class SitePipeline:
    """The handlers of one site: `hello`, `train`, `evaluate` (message content in, content out)."""

    settings: SiteSettings
    hooks: ClientHooks = field(default_factory=ClientHooks)
    context: Context | None = None  # the node's Context: keeps a secure-aggregation session between messages
    site: SiteContext | None = field(default=None, init=False)  # this message's, once prepared
    instructions: Instructions | None = field(default=None, init=False)

    @property
    def runtime(self) -> SiteRuntime:
        return runtime_for(self.settings)

    def _prepare(self, content: RecordDict, *, own_classes: bool = False
                 ) -> tuple[Instructions, SiteData, SamSegmenter, Layout]:
        instructions = Instructions.from_record(content[CONFIG])
        data = self.runtime.data(instructions.model, instructions.seed)
        num_classes = data.num_classes if own_classes else instructions.num_classes
        model = self.runtime.model(instructions.model, num_classes=num_classes, seed=instructions.seed)
        layout = Layout.of(trainable_state(model))
        self.site, self.instructions = SiteContext(self.settings, data, layout), instructions
        return instructions, data, model, layout

    def hello(self, content: RecordDict) -> RecordDict:
        _, data, _, layout = self._prepare(content, own_classes=True)
        return RecordDict({SITE: ConfigRecord({
            "name": data.name, "num-train": len(data.train), "num-val": len(data.val),
            "num-classes": data.num_classes, "layout": layout.digest, "fedmed": __version__,
            **hello_fields(self.settings),
        })})

    def secagg(self, content: RecordDict) -> RecordDict:
        return handle_stage(self.settings, self.hooks.check_secure_config, content, self.context)

    def _load_global(self, content: RecordDict, model: SamSegmenter, layout: Layout) -> np.ndarray:
        digest = content[LAYOUT_KEY]["digest"] if LAYOUT_KEY in content else None
        if digest != layout.digest:
            raise GlobalModelError("the server's tensor layout differs from this site's model")
        vector = content[GLOBAL][FLAT].numpy()
        if vector.dtype != np.float32 or vector.shape != (layout.numel,) or not np.all(np.isfinite(vector)):
            raise GlobalModelError(f"global vector {vector.dtype} {vector.shape} does not fit ({layout.numel},) float32")
        load_trainable_state(model, layout.unflatten(vector))
        return vector

    def train(self, content: RecordDict) -> RecordDict:
        instructions, data, model, layout = self._prepare(content)
        site = SiteContext(self.settings, data, layout)
        self.hooks.check_round(site, instructions)
        seal: Seal = secure_seal(self.settings, content, self.context, instructions) or _plain_seal
        start = self._load_global(content, model, layout)
        config = TrainConfig(
            epochs=instructions.local_epochs, batch_size=instructions.batch_size, lr=instructions.lr,
            weight_decay=instructions.weight_decay, seed=derive_seed(instructions.seed, instructions.round, data.name),
            device=self.settings.device,
        )
        result = self.hooks.train(model, data, config, site, instructions)
        model.to("cpu")
        update = layout.flatten(trainable_state(model)) - start
        self.hooks.check_payload(site, instructions, layout, update)
        vector = self.hooks.protect(site, instructions, update)
        key, payload, sent = seal(site, instructions, vector)
        extra = self.hooks.record(site, instructions, layout, sent) or {}
        logger.info("%s: round %d trained on %d samples, loss %.4f", data.name, instructions.round,
                    len(data.train), result.loss)
        return RecordDict({
            key: payload,
            LAYOUT_KEY: ConfigRecord({"digest": layout.digest}),
            METRICS: MetricRecord({"num-examples": len(data.train), "train-loss": float(result.loss),
                                   "steps": result.steps, **extra}),
        })

    def evaluate(self, content: RecordDict) -> RecordDict:
        instructions, data, model, layout = self._prepare(content)
        self._load_global(content, model, layout)
        metrics = evaluate(model, data.val, batch_size=instructions.batch_size,
                           device=resolve_device(self.settings.device))
        model.to("cpu")
        return RecordDict({METRICS: MetricRecord({
            "dice": float(metrics["dice"]), "iou": float(metrics["iou"]), "hd95": float(metrics["hd95"]),
            "loss": float(metrics["loss"]), "num-examples": int(metrics["samples"]),
        })})


def settings_from_node_config(context: Context) -> SiteSettings:
    """A deployed site's settings, from its SuperNode's `--node-config` (set by `fedmed client`)."""
    config = context.node_config
    data = config.get("data-dir")
    if not data:
        raise ValueError("this SuperNode has no 'data-dir' in its --node-config; start it with `fedmed client`")
    return SiteSettings(
        data=str(data), checkpoint=str(config["checkpoint"]) if config.get("checkpoint") else None,
        policy=str(config["policy"]) if config.get("policy") else None,
        device=str(config.get("device", "auto")), audit_dir=str(config["audit-dir"]) if config.get("audit-dir") else None,
        identity=str(config["identity-key"]) if config.get("identity-key") else None,
        roster=str(config["roster"]) if config.get("roster") else None,
    )


def default_hooks() -> ClientHooks:
    """Every fedmed site's hooks: its policy, differential privacy and audit log."""
    from fedmed.fl.site_hooks import site_hooks  # it builds on this module

    return site_hooks()


def make_client_app(settings_of: Callable[[Context], SiteSettings], hooks: ClientHooks | None = None) -> ClientApp:
    """A ClientApp whose handlers run `SitePipeline` with the settings `settings_of(context)` gives."""
    app = ClientApp()

    def handler(step: str):
        def handle(message: Message, context: Context) -> Message:
            pipeline = SitePipeline(settings_of(context), hooks or default_hooks(), context)
            reply, error = None, None
            try:
                reply = getattr(pipeline, step)(message.content)
            except RoundRefused as refusal:
                reply = RecordDict({REFUSAL: refusal.record()})
            except BaseException as raised:
                error = raised
                raise
            finally:
                pipeline.hooks.finish(pipeline, message.content, reply, error)
            return Message(reply, reply_to=message)
        return handle

    app.query("hello")(handler("hello"))
    app.query("secagg")(handler("secagg"))
    app.train()(handler("train"))
    app.evaluate()(handler("evaluate"))
    return app


app = make_client_app(settings_from_node_config)
