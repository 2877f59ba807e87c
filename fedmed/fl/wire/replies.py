"""The fields of a site's replies, named as release manifests name them (`policies.release.FIELDS`),
and their place on the wire.

A site assembles each reply as {field: value}, lets its policy's manifest reduce it
(`policies.reduce`), and `content` lays what is left out as Flower records: the update (the plain
vector, or the masked input) under its own record, the layout digest and the protocol message as
theirs, the site's audit-log head as `audit-head`, what its epsilon protects as `privacy-unit`, every number in one `metrics` record (a
per-class Dice as `dice_per_class/<class>`). `fields_of` reads a reply back into field names, for
the server and for tests that hold a reply to its manifest.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedmed.fl.wire.messages import LAYOUT_KEY, METRICS, SECAGG_KEY, SITE, UPDATE

AUDIT_HEAD = "audit-head"  # ConfigRecord {"head": the sender's signed audit-log head, as text}
PRIVACY_UNIT = "privacy-unit"  # ConfigRecord {"unit": what the reported epsilon protects: image, patient, site}
PER_CLASS = "dice_per_class/"


def content(fields: dict[str, Any]) -> RecordDict:
    """A reply's records from its (reduced) fields; `update` is (record name, ArrayRecord)."""
    records: dict[str, Any] = {}
    metrics: dict[str, int | float] = {}
    for name, value in fields.items():
        if name == "update":
            key, record = value
            records[key] = record
        elif name == "layout":
            records[LAYOUT_KEY] = value
        elif name == "protocol":
            records[SECAGG_KEY] = value
        elif name == "audit_head":
            records[AUDIT_HEAD] = ConfigRecord({"head": value})
        elif name == "privacy_unit":
            records[PRIVACY_UNIT] = ConfigRecord({"unit": str(value)})
        elif name == "dice_per_class":
            metrics.update({PER_CLASS + cls: float(v) for cls, v in value.items()})
        else:
            metrics[name] = value if isinstance(value, int) else float(value)
    if metrics:
        records[METRICS] = MetricRecord(metrics)
    return RecordDict(records)


def fields_of(kind: Literal["hello", "train", "secagg", "evaluate"], reply: RecordDict) -> set[str]:
    """The field names a `kind` reply carries (every record and metric, whatever the sender meant)."""
    names: set[str] = set()
    for key, record in reply.items():
        if key == SITE:
            names |= set(json.loads(str(record["json"])))
        elif key == UPDATE or (key == SECAGG_KEY and kind == "train"):
            names.add("update")
        elif key == SECAGG_KEY:
            names.add("protocol")
        elif key == LAYOUT_KEY:
            names.add("layout")
        elif key == AUDIT_HEAD:
            names.add("audit_head")
        elif key == PRIVACY_UNIT:
            names.add("privacy_unit")
        elif key == METRICS:
            names |= {"dice_per_class" if k.startswith(PER_CLASS) else k for k in record}
        else:
            names.add(key)
    return names


def metric(reply: RecordDict, name: str, default: Any = None) -> Any:
    """One number of a reply's metrics (`default` when the site did not send it)."""
    record = reply.get(METRICS) if isinstance(reply, RecordDict) else None
    return record.get(name, default) if isinstance(record, MetricRecord) else default


def per_class(reply: RecordDict) -> dict[str, float]:
    """The per-class Dice of an evaluate reply."""
    record = reply.get(METRICS) if isinstance(reply, RecordDict) else None
    if not isinstance(record, MetricRecord):
        return {}
    return {k.removeprefix(PER_CLASS): float(v) for k, v in record.items() if k.startswith(PER_CLASS)}


def privacy_unit(reply: RecordDict) -> str | None:
    """What a train reply's epsilon protects ("image", "patient", "site"), if the site said."""
    record = reply.get(PRIVACY_UNIT) if isinstance(reply, RecordDict) else None
    return str(record["unit"]) if isinstance(record, ConfigRecord) and "unit" in record else None


def audit_head(content: RecordDict) -> str | None:
    """The sender's audit-log head a message or reply carries (as text), if any."""
    record = content.get(AUDIT_HEAD) if isinstance(content, RecordDict) else None
    return str(record["head"]) if isinstance(record, ConfigRecord) and "head" in record else None


def with_head(content: RecordDict, head: str) -> RecordDict:
    """`content` with the sender's audit-log head added."""
    return RecordDict({**content, AUDIT_HEAD: ConfigRecord({"head": head})})
