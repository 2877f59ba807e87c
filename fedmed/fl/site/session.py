"""One message at one site: what its steps know and decide, passed down explicitly.

A `SiteSession` is made by the pipeline for every message and handed to each step (admission,
training, release, masking, journal) in turn; nothing about a message lives anywhere else. It holds
the site's settings and runtime, the node's Flower `Context` (where a secure-aggregation session and
the site's audit name wait between messages), the message's instructions, data, model and layout
once prepared, and the decisions to audit (policy decisions, refusals, privacy budget), in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flwr.app import ConfigRecord, Context

from fedmed.data import SiteData
from fedmed.fl.site.runtime import SiteRuntime
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import Layout
from fedmed.fl.wire.messages import RoundRefused
from fedmed.fl.wire.tensors import party_name
from fedmed.fl.wire.transcript import RoundTranscript
from fedmed.models import SamSegmenter
from policies import Policy, RoundRequest

PARTY_STATE = "fedmed-site"  # Context.state ConfigRecord: {"party": the site's audit name}

MessageKind = Literal["hello", "train", "evaluate", "secure aggregation"]


@dataclass
class SiteSession:
    """What one message of one site knows between its steps."""

    settings: SiteSettings
    runtime: SiteRuntime
    context: Context | None
    kind: MessageKind
    round: int | None = None
    instructions: Instructions | None = None
    data: SiteData | None = None
    model: SamSegmenter | None = None
    layout: Layout | None = None
    request: RoundRequest | None = None  # the round as the site's policy judges it
    transcript: RoundTranscript | None = None  # a secure round's transcript, once checked
    decisions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # audit entries, in order

    @property
    def policy(self) -> Policy | None:
        return self.runtime.policy

    @property
    def round_instructions(self) -> Instructions | None:
        """The instructions of the message, or of the secure round it belongs to (a stage message)."""
        if self.instructions is not None:
            return self.instructions
        return self.transcript.instructions if self.transcript is not None else None

    def prepare(self, instructions: Instructions, *, own_classes: bool = False) -> None:
        """Take the message's instructions and build this round's data, model and layout."""
        self.instructions, self.round = instructions, instructions.round
        seed = instructions.federation.seed  # random initialisation: every party builds the same model
        self.data = self.runtime.data(instructions.model)
        num_classes = self.data.num_classes if own_classes else instructions.num_classes
        self.model, self.layout = self.runtime.model(instructions.model, num_classes=num_classes, seed=seed)
        if self.context is not None:
            self.context.state[PARTY_STATE] = ConfigRecord({"party": self.party})

    @property
    def party(self) -> str:
        """The site's audit name: its enrolment's, else its data's, else remembered in the node's Context,
        else its folder."""
        if self.settings.name:
            return party_name(self.settings.name)
        if self.data is not None:
            return party_name(self.data.name)
        if self.context is not None and PARTY_STATE in self.context.state:
            return str(self.context.state[PARTY_STATE]["party"])
        partition = self.settings.partition
        return party_name(f"site-{partition}" if partition is not None else Path(self.settings.data).name)

    @property
    def audit_files(self) -> tuple[Path, Path] | None:
        """(the site's audit log, its private key), or None for a site that keeps no log."""
        if self.settings.audit_dir is None:
            return None
        log = Path(self.settings.audit_dir) / f"{self.party}.jsonl"
        if self.settings.audit_key is not None:
            return log, Path(self.settings.audit_key)
        return log, (self.state_dir / "audit.key" if self.state_dir is not None else log.with_suffix(".key"))

    @property
    def state_dir(self) -> Path | None:
        """The site's private folder (`<state_dir>/<party>`), or None without a state directory."""
        return Path(self.settings.state_dir) / self.party if self.settings.state_dir else None

    def decide(self, stage: str, violations: list) -> None:
        """Audit a policy decision (accepted when `violations` is empty); nothing without a policy."""
        if self.policy is not None:
            self.decisions.append(("policy_decision", dict(
                round=self.round, accepted=not violations, stage=stage, violations=[str(v) for v in violations],
                policy=self.policy.name, epsilon_budget=self.policy.privacy.max_epsilon)))

    def refuse(self, reason: str, violations: list[str]) -> RoundRefused:
        """Audit a refusal and return the `RoundRefused` to raise."""
        self.decisions.append(("refusal", dict(round=self.round, reason=reason, violations=violations,
                                               peer="server")))
        return RoundRefused(reason, violations=violations, policy=self.policy.name if self.policy else None)
