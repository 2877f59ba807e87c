"""A dataset's fingerprint: a stable digest of what the data is, the key of its privacy ledger.

The privacy budget belongs to the patients, not to a run folder: a site that trains on the same
data from a new `--out`, a new state folder or a second client must find the same ledger. So the
ledger is keyed by a digest of the data itself:

    dataset_fingerprint({"case_001": [img, mask], ...})          # files on disk (the data layer)
    description_fingerprint({"generator": "synthetic", "seed": 0, "site": 2, "samples": 80})

For files, each case counts by its id and, per file, its name (relative to `root`, else its own
name) and its bytes' SHA-256 (`content="sha256"`, the default: a copy of the same data anywhere
gets the same fingerprint) or its size and modification time (`content="stat"`: no reading, but a
copy with new times gets a new fingerprint, i.e. a fresh budget). Erring coarse only over-counts:
two datasets that share a fingerprint share one budget, which is safe; a dataset that changes
fingerprint starts a new budget, which the site must not let happen by accident.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from audit import canonical_json

FINGERPRINT_DOMAIN = "fedmed-dataset-v1"
_CHUNK = 1 << 20


class FingerprintError(ValueError):
    """Data that cannot be fingerprinted (no cases, a file that cannot be read): names the file."""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_record(path: Path, root: Path | None, content: str) -> list[Any]:
    name = path.relative_to(root).as_posix() if root is not None else path.name
    try:
        if content == "sha256":
            return [name, _file_sha256(path)]
        stat = path.stat()
        return [name, stat.st_size, stat.st_mtime_ns]
    except OSError as e:
        raise FingerprintError(f"{path}: cannot read it to fingerprint the dataset ({e.strerror or e})") from None


def dataset_fingerprint(cases: Mapping[str, Iterable[str | os.PathLike]], *, root: str | os.PathLike | None = None,
                        content: Literal["sha256", "stat"] = "sha256") -> str:
    """SHA-256 (hex) of the dataset's cases: case id -> the files of that case (image, mask, ...).

    Case ids and each case's files are sorted, so the order given does not matter."""
    if content not in ("sha256", "stat"):
        raise FingerprintError(f"content must be 'sha256' or 'stat', not {content!r}")
    if not cases:
        raise FingerprintError("a dataset without cases has no fingerprint")
    base = Path(root) if root is not None else None
    listing = {str(case): sorted(_file_record(Path(f), base, content) for f in files) for case, files in cases.items()}
    return hashlib.sha256(canonical_json([FINGERPRINT_DOMAIN, content, listing])).hexdigest()


def description_fingerprint(description: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of what defines generated data (plain JSON: generator, seed, site, sizes)."""
    try:
        return hashlib.sha256(canonical_json([FINGERPRINT_DOMAIN, "description", dict(description)])).hexdigest()
    except (TypeError, ValueError) as e:
        raise FingerprintError(f"a dataset description must be plain JSON ({e})") from None
