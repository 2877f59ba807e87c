"""Built-in pretrained weights: the tiny SAM, pretrained on a public synthetic corpus.

SAM's own checkpoints (ViT-B/L/H, 0.4-2.5 GB) cannot ship with fedmed; the tiny preset's can
(2.9 MB). Fine-tuning is meant to start from a pretrained model, and under DP-SGD it must: from
random weights the noise at epsilon 8 swamps the gradient of fedmsa's 229k trainable values and
Dice falls, from these weights it rises (BENCHMARKS.md, "Federation").

`weights/sam_tiny_public.pth` is in SAM's official state-dict layout (it loads like any SAM
`.pth`); `weights/sam_tiny_public.json` records how it was made (`fedmed.train.pretrain`, remade
by `python scripts/make_tiny_checkpoint.py`) and its SHA-256, which `builtin_checkpoint` checks.
A site finds its own installed copy by that SHA-256 (`find_builtin`), so a federation that starts
from it needs no `--checkpoint` at the sites.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).with_name("weights")
BUILTIN_WEIGHTS = {"tiny": WEIGHTS_DIR / "sam_tiny_public.pth"}


class BuiltinWeightsError(ValueError):
    """A built-in weights file that is missing or is not the one its record names."""


def record_path(weights: Path) -> Path:
    """The JSON record beside a weights file: recipe, metrics and SHA-256."""
    return weights.with_suffix(".json")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (hex), cached while its size and modification time stay the same."""
    path = Path(path)
    stat = path.stat()
    return _sha256_of(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _sha256_of(path: Path, _mtime_ns: int, _size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_checkpoint(arch: str) -> Path | None:
    """The preset's built-in weights (checked against their record), or None if it has none."""
    path = BUILTIN_WEIGHTS.get(arch)
    if path is None:
        return None
    try:
        recorded = json.loads(record_path(path).read_text())["sha256"]
        actual = file_sha256(path)
    except (OSError, ValueError, KeyError) as error:
        raise BuiltinWeightsError(f"{path}: the built-in {arch} weights or their record are unreadable "
                                  f"({error}); reinstall fedmed") from None
    if actual != recorded:
        raise BuiltinWeightsError(f"{path}: sha256 {actual[:12]}... is not the recorded {recorded[:12]}...; "
                                  "the file was changed; reinstall fedmed")
    return path


def starting_checkpoint(arch: str, checkpoint: str | Path | None, *, pretrained: bool) -> str | None:
    """The weights a run starts from: `checkpoint` if given, else the preset's built-in weights
    (if `pretrained` and it has them), else None (random weights)."""
    if checkpoint:
        return str(checkpoint)
    builtin = builtin_checkpoint(arch) if pretrained else None
    return str(builtin) if builtin else None


def find_builtin(sha256: str) -> Path | None:
    """The built-in weights file whose SHA-256 is `sha256`, if this installation has one."""
    for arch in BUILTIN_WEIGHTS:
        path = builtin_checkpoint(arch)
        if path is not None and file_sha256(path) == sha256:
            return path
    return None
