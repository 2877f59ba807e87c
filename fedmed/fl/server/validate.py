"""Refuse a site's update before it can touch the global model.

`check_update(content, layout, site=...)` returns the update vector and its training-sample weight,
or raises `UpdateRejected` listing every reason at once: a missing or unknown record or array, a
layout (tensor names, shapes, order) other than the model's, a dtype or size other than float32 x
trainable parameters, bytes that do not decode, NaN or Inf values, a sample count (where the site
sends one) that is not a positive whole number.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmed.fl.wire.layout import FLAT, WIRE_DTYPE, Layout
from fedmed.fl.wire.messages import LAYOUT_KEY, METRICS, UPDATE


class UpdateRejected(ValueError):
    """A site's update that is not averaged in; `reasons` lists everything wrong with it."""

    def __init__(self, site: str, reasons: list[str]):
        self.site = site
        self.reasons = list(reasons)
        super().__init__(f"update from {site} rejected: " + "; ".join(self.reasons))


def _vector(record: object, layout: Layout, reasons: list[str]) -> np.ndarray | None:
    if not isinstance(record, ArrayRecord):
        reasons.append(f"no '{UPDATE}' array record")
        return None
    unknown = sorted(set(record) - {FLAT})
    if unknown:
        reasons.append(f"unknown arrays {unknown}")
    if FLAT not in record:
        reasons.append(f"no '{FLAT}' array")
        return None
    array = record[FLAT]
    if array.dtype != WIRE_DTYPE:
        reasons.append(f"dtype {array.dtype}, expected {WIRE_DTYPE}")
    if tuple(array.shape) != (layout.numel,):
        reasons.append(f"shape {tuple(array.shape)}, expected ({layout.numel},) = the model's trainable parameters")
    if reasons:
        return None
    try:
        vector = array.numpy()
    except Exception as error:  # noqa: BLE001 - any decoding failure is a rejection reason
        reasons.append(f"undecodable array ({type(error).__name__}: {error})")
        return None
    if vector.dtype != np.float32 or vector.shape != (layout.numel,):
        reasons.append(f"array bytes hold {vector.dtype} {vector.shape}, not what its header declares")
        return None
    bad = int(np.count_nonzero(~np.isfinite(vector)))
    if bad:
        reasons.append(f"{bad} NaN/Inf values")
        return None
    return vector


def check_update(content: RecordDict, layout: Layout, *, site: str) -> tuple[np.ndarray, int | None]:
    """The update vector and sample count of a train reply (None: the site's release manifest
    withholds it), or `UpdateRejected` with every reason."""
    reasons: list[str] = []
    config = content.get(LAYOUT_KEY) if isinstance(content, RecordDict) else None
    digest = config.get("digest") if isinstance(config, ConfigRecord) else None
    if digest != layout.digest:
        reasons.append("tensor names, shapes or order differ from the model's (layout digest mismatch)")
    vector = _vector(content.get(UPDATE) if isinstance(content, RecordDict) else None, layout, reasons)
    metrics = content.get(METRICS) if isinstance(content, RecordDict) else None
    samples = metrics.get("num_examples") if isinstance(metrics, MetricRecord) else None
    whole = (isinstance(samples, int) and not isinstance(samples, bool)) or (
        isinstance(samples, float) and math.isfinite(samples) and samples.is_integer())
    if samples is not None and not (whole and samples >= 1):
        reasons.append(f"num_examples must be a positive whole number, got {samples!r}")
    if reasons or vector is None:
        raise UpdateRejected(site, reasons)
    return vector, None if samples is None else int(samples)
