"""A site's local training in a train message: DP-SGD or client-level DP when the round asks for
it (recorded in the site's ledger before anything leaves, `fedmed.fl.site.privacy`), plain local
training otherwise, by the round's recipe (`fedmed.recipes`); then the update, local minus global,
of the trainable tensors only.

Training randomness (data order, prompt jitter) is the site's: its seed is an HMAC, under a secret
key the site keeps in its state directory (`training.key`, 32 bytes from the OS CSPRNG), of the
global vector it starts from and the round. A server can neither compute nor choose it; the same
round from the same model trains the same (a resumed run ends with the same model), and a server
that replays it to other participants to difference the sums is refused by the site's release
memory (`fedmed.fl.site.releases`). A site without a state directory draws a fresh seed from the
CSPRNG for every round.

With `training.keep_optimizer_state` (the default of FLAP-SAM's and FedFMS's recipes) the site keeps
its optimizer state and schedule step (`fedmed.train.optim`) in its private state directory, never sent:

    <state_dir>/<party>/optimizer/<run key>/round_<r>.pt   the state after the site's round r

The run key is a digest of the instructions that fix the run as the site sees it (study, seed, model,
training, strategy, privacy; not the rounds, which a resumed run may extend). Round r starts from
the latest state of a round before r, so a round trained again after a crash (the server resumes
from its last checkpoint) starts from the same state as the first time: a resumed run ends with the
same model. After saving round r the site keeps only that state and the one before it, and drops any
of later rounds (a run of the same key abandoned earlier). A state that cannot be read or does not
fit the model is a refusal naming the file (`OptimizerStateError`); keeping it needs a state
directory. The schedule's horizon is the site's own: rounds x local epochs of its own batches.

FedProx's proximal term (mu/2) ||w - w_global||^2 over the trainable tensors enters by exactly one
route. Plain training and client-level DP add its gradient, mu (w - w_global), to every trainable
tensor's gradient during backward (`proximal_term`). Under DP-SGD that hook is not installed: the
fast clipping route forms no parameter gradient (the term would be silently dropped), and the
per-parameter route of a large unit would put it inside the sum that is clipped, noised and divided
by the expected batch. The term goes to `dp_train_local` as `proximal_gradient` instead, added once
per step after the noise, unclipped (it depends on no example, so it costs no privacy). The
reported loss is the task loss alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from fedmed.fl.site.privacy import SitePrivacy
from fedmed.fl.site.session import SiteSession
from fedmed.models import SamSegmenter, trainable_state
from fedmed.privacy import Proximal
from fedmed.recipes import get_recipe
from fedmed.train import TrainConfig, TrainResult, train_local
from fedmed.train.optim import OptimizerStateError, load_state, save_state
from fedmed.train.schedule import planned_total_steps

TRAINING_KEY = "training.key"
OPTIMIZER_DIR = "optimizer"
_STATE_FILE = re.compile(r"^round_(\d+)\.pt$")


def _site_key(folder: Path) -> bytes:
    """The site's secret training key (made on first use, mode 0600, never overwritten)."""
    path = folder / TRAINING_KEY
    folder.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(os.urandom(32))
    return path.read_bytes()


def training_seed(session: SiteSession, start_sha256: str) -> int:
    """A 31-bit seed for this round's training, the site's own (see the module docstring), from the
    `vector_sha256` of the global vector it starts from."""
    message = f"{start_sha256}/{session.round}".encode()
    key = _site_key(session.state_dir) if session.state_dir is not None else os.urandom(32)
    return int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:4], "big") & 0x7FFFFFFF


def run_key(session: SiteSession) -> str:
    """What names the run's optimizer states at the site (see the module docstring)."""
    fixed = session.instructions.model_dump(mode="json", include={"federation", "model", "training", "strategy",
                                                                    "privacy"})
    for resumable in ("rounds", "min_clients"):
        fixed["federation"].pop(resumable)
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:32]


class OptimizerStates:
    """A site's optimizer states of one run, one file per round it trained (module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _STATE_FILE.match(p.name)))

    def path(self, round: int) -> Path:
        return self.folder / f"round_{round}.pt"

    def before(self, round: int) -> Path | None:
        """The state to start `round` from: the latest of an earlier round (None: a fresh optimizer)."""
        earlier = [r for r in self._rounds() if r < round]
        return self.path(earlier[-1]) if earlier else None

    def save(self, round: int, state: dict) -> None:
        """Keep the state after `round` (atomic), then drop all but it and the latest before it."""
        save_state(self.path(round), state)
        earlier = [r for r in self._rounds() if r < round]
        for stale in [r for r in self._rounds() if r > round] + earlier[:-1]:
            self.path(stale).unlink(missing_ok=True)


@contextmanager
def proximal_term(model: SamSegmenter, mu: float) -> Iterator[None]:
    """While inside, every trainable tensor's gradient gains mu (w - w0), w0 its value on entry: the
    gradient of (mu/2) ||w - w0||^2 added to the loss. mu = 0: nothing changes."""
    if mu == 0:
        yield
        return
    params = dict(model.named_parameters())
    handles = []
    for name in model.trainable_names:
        param = params[name]
        anchor = param.detach().clone()

        def pull(grad: torch.Tensor, param: torch.Tensor = param, anchor: torch.Tensor = anchor) -> torch.Tensor:
            return grad + mu * (param.detach() - anchor.to(grad.device))

        handles.append(param.register_hook(pull))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def proximal_gradient(model: SamSegmenter, mu: float) -> Proximal | None:
    """DP-SGD's route for the proximal term: w -> {name: mu (w - w0)}, w0 the trainable tensors now
    (the global model); None at mu = 0."""
    if mu == 0:
        return None
    params = dict(model.named_parameters())
    anchor = {name: params[name].detach().clone() for name in model.trainable_names}
    return lambda current: {name: mu * (w - anchor[name].to(w.device)) for name, w in current.items()}


def train_round(session: SiteSession, privacy: SitePrivacy | None, start_sha256: str) -> TrainResult:
    """Train the session's model (holding the global vector of SHA-256 `start_sha256`, `vector_sha256`)
    on the site's training split."""
    instructions, data = session.instructions, session.data
    recipe, training = instructions.model.recipe, instructions.training
    total_steps = planned_total_steps(get_recipe(recipe).schedule, num_samples=len(data.train),
                                      batch_size=training.batch_size,
                                      epochs=instructions.federation.rounds * training.local_epochs)
    config = training.train_config(recipe=recipe, seed=training_seed(session, start_sha256),
                                   device=session.settings.device, total_steps=total_steps)
    mu, study = instructions.strategy.mu, instructions.federation.name
    if privacy is not None and privacy.config.mode == "sample":  # the proximal term after the noise, no hook
        return privacy.train(session.model, data, config, round=instructions.round, study=study,
                             proximal=proximal_gradient(session.model, mu))
    with proximal_term(session.model, mu):
        if privacy is not None:  # client-level DP; admission refuses the recipes DP cannot train yet
            return privacy.train(session.model, data, config, round=instructions.round, study=study)
        if not training.keep_optimizer_state:
            return train_local(session.model, data.train, config)
        return _train_keeping_state(session, config)


def _train_keeping_state(session: SiteSession, config: TrainConfig) -> TrainResult:
    """`train_local` from the site's kept optimizer state, keeping the new one (module docstring)."""
    if session.state_dir is None:
        raise session.refuse(f"{session.party} declines round {session.round}: the round keeps each site's "
                             "optimizer state across rounds in its state directory, and this site has none",
                             ["no state directory for the optimizer state"])
    states = OptimizerStates(session.state_dir / OPTIMIZER_DIR / run_key(session))
    path = states.before(session.round)
    try:
        previous = load_state(path) if path is not None else None
        result = train_local(session.model, session.data.train, config, optimizer_state=previous)
    except OptimizerStateError as error:
        reason = str(error) if path is None or str(path) in str(error) else f"{path}: {error}"
        raise session.refuse(f"{session.party} declines round {session.round}: {reason}", [reason]) from None
    states.save(session.round, result.optimizer_state)
    return result


def local_update(session: SiteSession, start: np.ndarray) -> np.ndarray:
    """The trained model's trainable tensors minus the global vector `start` [L], flat float32."""
    session.model.to("cpu")
    return session.layout.flatten(trainable_state(session.model)) - start
