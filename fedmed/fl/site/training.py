"""A site's local training in a train message: DP-SGD or client-level DP when the round asks for
it (recorded in the site's ledger before anything leaves, `fedmed.fl.site.privacy`), plain local
training otherwise; then the update, local minus global, of the trainable tensors only.

Training randomness (data order, prompt jitter) is the site's: its seed is an HMAC, under a secret
key the site keeps in its state directory (`training.key`, 32 bytes from the OS CSPRNG), of the
global vector it starts from and the round. A server can neither compute nor choose it; the same
round from the same model trains the same (a resumed run ends with the same model), and a server
that replays it to other participants to difference the sums is refused by the site's release
memory (`fedmed.fl.site.releases`). A site without a state directory draws a fresh seed from the
CSPRNG for every round.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import numpy as np

from fedmed.fl.site.privacy import SitePrivacy
from fedmed.fl.site.session import SiteSession
from fedmed.fl.wire.transcript import vector_sha256
from fedmed.models import trainable_state
from fedmed.train import TrainResult, train_local

TRAINING_KEY = "training.key"


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


def training_seed(session: SiteSession, start: np.ndarray) -> int:
    """A 31-bit seed for this round's training, the site's own (see the module docstring)."""
    message = f"{vector_sha256(start)}/{session.round}".encode()
    key = _site_key(session.state_dir) if session.state_dir is not None else os.urandom(32)
    return int.from_bytes(hmac.new(key, message, hashlib.sha256).digest()[:4], "big") & 0x7FFFFFFF


def train_round(session: SiteSession, privacy: SitePrivacy | None, start: np.ndarray) -> TrainResult:
    """Train the session's model (holding the global vector `start`) on the site's training split."""
    instructions, data = session.instructions, session.data
    config = instructions.training.train_config(seed=training_seed(session, start), device=session.settings.device)
    if privacy is not None:
        return privacy.train(session.model, data, config, round=instructions.round, study=instructions.federation.name)
    return train_local(session.model, data.train, config)


def local_update(session: SiteSession, start: np.ndarray) -> np.ndarray:
    """The trained model's trainable tensors minus the global vector `start` [L], flat float32."""
    session.model.to("cpu")
    return session.layout.flatten(trainable_state(session.model)) - start
