"""Small secure federations for the fl tests: the sites of fl_helpers, enrolled, with their updates captured."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fl_helpers import small_plan
from flwr.app import Message

from fedmed.fl.launch.inprocess import InProcessGrid
from fedmed.fl.plan import derive_seed
from fedmed.fl.site import training
from fedmed.fl.site.client_app import make_client_app
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.messages import SECAGG, SECAGG_KEY, TRAIN
from fedmed.fl.wire.secagg import stage_bytes
from fedmed.train import TrainResult
from secure_agg import Stage, parse

SITES = ["site-0", "site-1", "site-2"]


class Captured(dict):
    """{(round, site): the update a site sealed}, filled while `capturing()` in this process."""

    @contextmanager
    def capturing(self, *, fast: bool = False, nan_site: str | None = None) -> Iterator[Captured]:
        """Capture every update the sites compute; `fast` trains by a seeded random step instead of SGD
        (no forward pass: for tests of the aggregation, not of training); `nan_site` sends a NaN."""
        computed = training.local_update

        def local_update(session, start: np.ndarray) -> np.ndarray:
            vector = computed(session, start)
            if session.data.name == nan_site:
                vector = vector.copy()
                vector[3] = np.nan
            self[(session.round, session.data.name)] = vector.copy()
            return vector

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(training, "local_update", local_update)
            if fast:
                patch.setattr(training, "train_round", _random_step)
            yield self


def _random_step(session, privacy, start_sha256) -> TrainResult:
    generator = torch.Generator().manual_seed(derive_seed(0, session.round, session.data.name))
    with torch.no_grad():
        for parameter in (p for p in session.model.parameters() if p.requires_grad):
            parameter += 1e-3 * torch.randn(parameter.shape, generator=generator)
    return TrainResult(loss=0.5, samples=len(session.data.train), steps=1)


def secure_plan(out: Path, roster: Path, **changes):
    return small_plan(out, **{"secure_aggregation": {"enabled": True}, "roster": str(roster), **changes})


def secure_grid(keys: list[Path], roster: Path, intercept=None, enrolled: int = 3,
                state: Path | None = None) -> InProcessGrid:
    """Three sites; the first `enrolled` have their identity key and the roster. Their state (release
    memory, training keys) is in `state`, a fresh folder unless given."""
    state = state or Path(tempfile.mkdtemp(prefix="fedmed-test-secure-sites-"))

    def settings(context) -> SiteSettings:
        i = int(context.node_config["partition-id"])
        secure = {"identity": str(keys[i]), "roster": str(roster)} if i < enrolled else {}
        return SiteSettings(partition=i, samples_per_site=5, device="cpu", state_dir=str(state), **secure)

    return InProcessGrid(make_client_app(settings), [{"partition-id": i} for i in range(3)], intercept=intercept)


def stage_of(message: Message) -> str | None:
    """The secure-aggregation stage a server message asks for (None for hello and evaluate)."""
    kind = message.metadata.message_type
    if kind == TRAIN and SECAGG_KEY in message.content:
        return "masked_input"
    if kind == SECAGG:
        return parse(stage_bytes(message.content, "test")).STAGE.value
    return None


def down_from(stages: dict[int, str], how: str = "crash"):
    """An intercept under which node k stops answering from stage `stages[k]` on (this round)."""
    order = [s.value for s in Stage]

    def intercept(node, message, deliver):
        stage = stage_of(message)
        if stage is not None and node in stages and order.index(stage) >= order.index(stages[node]):
            if how == "crash":
                raise RuntimeError(f"site went down at {stage}")
            return None
        return deliver(message)
    return intercept
