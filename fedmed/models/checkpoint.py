"""Load official SAM / MedSAM `.pth` state dicts into a plain SAM, at any image size.

For an image size other than the checkpoint's, the absolute positional embedding
(`image_encoder.pos_embed`, [1, G, G, C]) is resized bicubically to the new grid, and the relative
position tables of global-attention blocks (`rel_pos_h/w`, [2G-1, head_dim]) linearly, as SAMed and
FLAP-SAM do. Windowed blocks' tables depend on the window size only and are unchanged. Tensors under a `skip`
prefix are never loaded (a head that re-initialises them, as FLAP-SAM's does) and are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the architecture."""


@dataclass
class LoadReport:
    """What loading a checkpoint did: keys the model lacked or the file lacked, tensors resized."""

    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth` state dict (plain, or wrapped as {"model": ...} / {"state_dict": ...})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or non-tensor file
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({error})") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors")
    return loaded


def _resize_pos_embed(tensor: torch.Tensor, grid: int) -> torch.Tensor:
    resized = F.interpolate(tensor.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(tensor.dtype)


def _resize_rel_pos(tensor: torch.Tensor, length: int) -> torch.Tensor:
    resized = F.interpolate(tensor.T.unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized.squeeze(0).T.to(tensor.dtype)


def _fit_to_model(state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> list[str]:
    """Resize position tensors in `state` in place to the model's shapes; return the resized names."""
    resized = []
    for name, tensor in state.items():
        target = model_state.get(name)
        if target is None or target.shape == tensor.shape or target.dim() != tensor.dim():
            continue
        if name == "image_encoder.pos_embed" and target.shape[-1] == tensor.shape[-1]:
            state[name] = _resize_pos_embed(tensor, target.shape[1])
            resized.append(name)
        elif name.endswith(("rel_pos_h", "rel_pos_w")) and target.shape[-1] == tensor.shape[-1]:
            state[name] = _resize_rel_pos(tensor, target.shape[0])
            resized.append(name)
    return resized


def load_sam_checkpoint(sam: nn.Module, path: str | Path, *, skip: tuple[str, ...] = ()) -> LoadReport:
    """Load an official SAM/MedSAM checkpoint into a plain (method-free) SAM.

    Raises CheckpointError naming the first tensor whose shape does not fit, with both shapes, and
    refuses a checkpoint none of whose tensors match the model. Missing and unexpected keys are
    reported, not fatal; tensors under a `skip` prefix are left as the model has them (`skipped`).
    """
    state = dict(read_state_dict(path))
    skipped = [name for name in state if name.startswith(skip)] if skip else []
    for name in skipped:
        del state[name]
    model_state = sam.state_dict()
    report = LoadReport(path=str(path), resized=_fit_to_model(state, model_state), skipped=skipped)
    for name, tensor in state.items():
        target = model_state.get(name)
        if target is not None and target.shape != tensor.shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint "
                f"but {tuple(target.shape)} in the model; does the architecture match?"
            )
    if not set(state) & set(model_state):
        raise CheckpointError(f"{path}: no tensor name matches a SAM model; is this a SAM checkpoint?")
    result = sam.load_state_dict(state, strict=False)
    report.missing, report.unexpected = list(result.missing_keys), list(result.unexpected_keys)
    return report
