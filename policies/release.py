"""The release manifest: every field each kind of reply may carry, and how it may leave the site.

A policy's `[release]` names, per reply (`hello`, `train`, `secagg`, `evaluate`), each field a site
may send and its treatment; a field it does not name is never sent:

- `public`: sent as it is (the policy declares it public)
- `rounded`: a metric sent to two decimals
- `bucket`: a count sent as the next power of two (0 stays 0): its order of magnitude only
- `dp`: protected by differential privacy and charged to the ledger (the training update only: a
  round without DP may not send it)
- `withheld`: not sent (the same as leaving it out; written out, it documents the choice)

`reduce(rules, kind, fields)` is what a site applies to every reply before it goes out; `FIELDS`
lists what fedmed can send, so a manifest naming anything else is refused when it loads.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["COUNTS", "FIELDS", "METRICS", "ReleaseRules", "Treatment", "bucket", "reduce"]

Treatment = Literal["public", "rounded", "bucket", "dp", "withheld"]
ReplyKind = Literal["hello", "train", "secagg", "evaluate"]

# What each reply of a fedmed site can carry.
FIELDS: dict[str, tuple[str, ...]] = {
    "hello": ("name", "num_train", "num_val", "num_classes", "class_names", "normalisation", "layout", "fedmed",
              "identity", "audit_head"),
    "train": ("update", "layout", "num_examples", "train_loss", "steps", "epsilon", "epsilon_round", "delta",
              "privacy_unit", "audit_head"),  # privacy_unit: what epsilon protects (image, patient, site)
    "secagg": ("protocol", "audit_head"),  # keys, encrypted shares, signatures, unmasking shares
    "evaluate": ("dice", "dice_per_class", "dice_oracle_boxes", "loss", "cases", "num_examples", "audit_head"),
}
COUNTS = frozenset({"num_train", "num_val", "num_examples", "cases", "steps"})  # may be bucketed
METRICS = frozenset({"train_loss", "dice", "dice_per_class", "dice_oracle_boxes", "loss"})  # may be rounded


def _all_public(kind: str) -> dict[str, Treatment]:
    return {name: "public" for name in FIELDS[kind]}


class ReleaseRules(BaseModel):
    """A policy's `[release]`: per reply, field -> treatment (a field not named is never sent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hello: dict[str, Treatment] = _all_public("hello")
    train: dict[str, Treatment] = _all_public("train")
    secagg: dict[str, Treatment] = _all_public("secagg")
    evaluate: dict[str, Treatment] = _all_public("evaluate")

    @field_validator("hello", "train", "secagg", "evaluate")
    @classmethod
    def _known(cls, rules: dict[str, Treatment], info: Any) -> dict[str, Treatment]:
        kind, problems = info.field_name, []
        for name, treatment in rules.items():
            if name not in FIELDS[kind]:
                problems.append(f"{name}: a {kind} reply carries no such field (it carries {', '.join(FIELDS[kind])})")
            elif treatment == "bucket" and name not in COUNTS:
                problems.append(f"{name}: only counts ({', '.join(sorted(COUNTS))}) can be bucketed")
            elif treatment == "rounded" and name not in METRICS:
                problems.append(f"{name}: only metrics ({', '.join(sorted(METRICS))}) can be rounded")
            elif treatment == "dp" and (kind, name) != ("train", "update"):
                problems.append(f"{name}: only the training update is protected by DP (`dp`)")
        if problems:
            raise ValueError("; ".join(problems))
        return rules

    def treatment(self, kind: ReplyKind, name: str) -> Treatment:
        """How field `name` of a `kind` reply may leave (`withheld` if the manifest does not name it)."""
        return getattr(self, kind).get(name, "withheld")


def bucket(count: int) -> int:
    """The next power of two at or above `count` (0 stays 0): a count's order of magnitude."""
    return 0 if count <= 0 else 1 << math.ceil(math.log2(count))


def _reduced(treatment: Treatment, value: Any) -> Any:
    if treatment == "rounded":
        return {k: round(float(v), 2) for k, v in value.items()} if isinstance(value, dict) else round(float(value), 2)
    if treatment == "bucket":
        return bucket(int(value))
    return value


def reduce(rules: ReleaseRules, kind: ReplyKind, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` of a `kind` reply as they may leave: withheld and unnamed ones dropped, counts
    bucketed and metrics rounded where the manifest says; `KeyError` for a field fedmed does not
    know (a reply may carry nothing the manifest cannot name)."""
    unknown = sorted(set(fields) - set(FIELDS[kind]))
    if unknown:
        raise KeyError(f"a {kind} reply would carry {', '.join(unknown)}, which no release manifest can name")
    return {name: _reduced(rules.treatment(kind, name), value) for name, value in fields.items()
            if rules.treatment(kind, name) != "withheld"}
