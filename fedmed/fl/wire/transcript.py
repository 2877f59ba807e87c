"""The round transcript: everything the server chooses that a site's released vector depends on.

    transcript = RoundTranscript(run_id=..., round=3, roster=roster.digest, participants=[1, 2, 3],
                                 config=secagg_config, weighting=Weighting(rule="samples", max_weight=80),
                                 global_sha256=vector_sha256(global_vector), instructions=instructions)
    transcript.session_id    # the secure-aggregation round id: commits to the transcript's digest

The server sends the transcript with the setup stage of a secure round. Each site checks it against
its policy, and the train message against it (`differences`); the secure-aggregation session then
runs under `session_id`, which ends in the transcript's SHA-256, so every signature of the round
(a site's keys, its messages, its signature on the survivors) is bound to the transcript. A site
that was told anything other than its peers — other instructions, another learning rate, another
global model, other weights, other participants — holds another digest: its peers' signed keys do
not verify under its own session id and it refuses before it masks anything (Pasquini et al., CCS
2022, "Eluding secure aggregation in federated learning via model inconsistency").

A site's weight is never a free number from the server: `Weighting` is a rule every participant
applies to its own count (`weight_of`), the same for all, and the site's policy says which rules it
accepts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from pydantic import BaseModel, ConfigDict, Field

from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.messages import SECAGG_ROUND
from secure_agg import SecAggConfig

TRANSCRIPT_DOMAIN = b"fedmed-round-transcript/v1"


def vector_sha256(vector: np.ndarray) -> str:
    """SHA-256 (hex) of a flat vector's little-endian bytes, as it travels."""
    return hashlib.sha256(np.ascontiguousarray(vector).astype(vector.dtype.newbyteorder("<"), copy=False)
                          .tobytes()).hexdigest()


class Weighting(BaseModel):
    """How every participant weighs its update in the secure sum.

    - `samples`: weight = min(own training samples, `max_weight`) / `max_weight` (FedAvg's weighting;
      the total weight the server decodes is the sum of the capped counts)
    - `equal`: weight 1 for every site (the unweighted mean; no count is revealed)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: Literal["samples", "equal"] = "samples"
    max_weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)

    def weight_of(self, samples: int) -> float:
        """This site's weight, in (0, max_weight], from its own sample count."""
        return float(min(samples, self.max_weight)) if self.rule == "samples" else self.max_weight


class RoundTranscript(BaseModel):
    """One secure round as the server set it up, identical for every participant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1, max_length=120)
    round: int = Field(ge=1)
    roster: str = Field(description="SHA-256 of the enrolment roster")
    participants: tuple[int, ...] = Field(min_length=2, description="secure-aggregation client ids, sorted")
    config: SecAggConfig
    weighting: Weighting
    global_sha256: str = Field(description="SHA-256 of the global vector the sites start from")
    instructions: Instructions

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(TRANSCRIPT_DOMAIN + canonical.encode()).hexdigest()

    @property
    def session_id(self) -> str:
        """The secure-aggregation round id: run, round and the transcript's digest."""
        return f"{self.run_id}/round-{self.round}/{self.digest}"

    def record(self) -> ConfigRecord:
        return ConfigRecord({"json": self.model_dump_json()})

    @classmethod
    def from_content(cls, content: RecordDict) -> RoundTranscript:
        """The transcript of a setup message (`pydantic.ValidationError`, `KeyError`, `TypeError` if malformed)."""
        return cls.model_validate_json(str(content[SECAGG_ROUND]["json"]))


def differences(expected: Any, received: Any, path: str = "") -> list[str]:
    """The fields (dotted paths) where two JSON-like values differ: what a site names when a train
    message does not match the transcript it signed."""
    if isinstance(expected, dict) and isinstance(received, dict):
        out = []
        for key in sorted(expected.keys() | received.keys()):
            out += differences(expected.get(key), received.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if expected == received else [path or "(the whole value)"]
