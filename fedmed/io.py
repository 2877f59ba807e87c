"""Atomic writes for run outputs: a crash mid-write never leaves a half-written file in place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

TRAINABLE_FORMAT = "fedmed-trainable-v1"


def _atomic_replace(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    payload = (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode()
    return _atomic_replace(Path(path), lambda stream: stream.write(payload))


def save_trainable(path: str | Path, tensors: dict[str, torch.Tensor], **meta: Any) -> Path:
    """Save trainable tensors (name -> tensor) with metadata (method, model config, round, …) atomically."""
    record = {"format": TRAINABLE_FORMAT, "meta": meta, "tensors": {k: v.detach().cpu() for k, v in tensors.items()}}
    return _atomic_replace(Path(path), lambda stream: torch.save(record, stream))


def save_record(path: str | Path, record: Any) -> Path:
    """Save any `torch.save`-able record (nested dicts and lists of tensors and numbers) atomically."""
    return _atomic_replace(Path(path), lambda stream: torch.save(record, stream))


def save_state_dict(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    """Save a plain state dict (name -> tensor, e.g. SAM's official layout) atomically."""
    tensors = {k: v.detach().cpu() for k, v in state.items()}
    return _atomic_replace(Path(path), lambda stream: torch.save(tensors, stream))


class TrainableCheckpointError(ValueError):
    """A file that is not a fedmed trainable-tensor checkpoint."""


def load_trainable(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by `save_trainable`: (tensors, meta)."""
    try:
        record = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainableCheckpointError(f"{path}: unreadable checkpoint ({error})") from error
    if not isinstance(record, dict) or record.get("format") != TRAINABLE_FORMAT:
        raise TrainableCheckpointError(f"{path}: not a {TRAINABLE_FORMAT} checkpoint")
    return record["tensors"], record["meta"]
