"""`load_sites`: the one entry point from a `--data` argument to the sites of a federation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedmed.data.check import SiteScan, scan_data
from fedmed.data.folders2d import Folder2DDataset, Folder2DIndex
from fedmed.data.nifti import NiftiSliceDataset
from fedmed.data.synthetic import make_synthetic_sites
from fedmed.data.transforms import CT_WINDOW
from fedmed.data.types import DataError, SiteData

SYNTHETIC = "synthetic"
SYNTHETIC_OPTIONS = {"samples_per_site", "num_classes"}
FOLDER_OPTIONS = {"drop_empty", "empty_keep_fraction", "ct_window", "channel"}


def split_cases(n: int, val_fraction: float, *, seed: int, site: str) -> tuple[list[int], list[int]]:
    """Shuffle case numbers 0..n-1 with the seed and the site's name, and cut off the validation part
    (at least one case each way when n >= 2; a single case goes to training). The split depends only
    on the site itself, so it is the same whether the site is loaded alone or with others."""
    order = np.random.default_rng([seed, *site.encode()]).permutation(n).tolist()
    n_val = 0 if n < 2 else min(max(1, int(round(n * val_fraction))), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def _site_data(site: SiteScan, *, image_size: int, seed: int, val_fraction: float, **options) -> SiteData:
    index = site.index
    train_ids, val_ids = split_cases(site.num_cases, val_fraction, seed=seed, site=site.name)
    if isinstance(index, Folder2DIndex):
        def part(ids):
            return Folder2DDataset([index.pairs[i] for i in ids], index.classes, image_size=image_size,
                                   site=site.name)
    else:
        def part(ids):
            return NiftiSliceDataset(
                [index.cases[i] for i in ids], index.classes, image_size=image_size, site=site.name,
                modality=index.modality, channel=options.get("channel", 0),
                drop_empty=options.get("drop_empty", False),
                empty_keep_fraction=options.get("empty_keep_fraction", 1.0),
                ct_window=options.get("ct_window", CT_WINDOW), seed=seed)
    return SiteData(site.name, part(train_ids), part(val_ids), index.classes.num_classes, site.class_names)


def load_sites(data: str | Path, *, image_size: int = 128, seed: int = 0, val_fraction: float = 0.2,
               num_sites: int = 3, progress: Callable[[str, int, int], None] | None = None,
               **options) -> list[SiteData]:
    """The sites of a federation, each split into training and validation.

    `data` is "synthetic" (the built-in federation of `num_sites` sites; options `samples_per_site`,
    `num_classes`), one dataset folder (one site named after it) or a folder of dataset folders (one
    site each, sorted). Folders are checked whole first: any problem raises `DataError` listing all.
    NIfTI options: `drop_empty`, `empty_keep_fraction`, `ct_window` (HU), `channel`.
    `progress(site, done, total)` follows the check, which reads every file once.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    synthetic = str(data) == SYNTHETIC
    allowed = SYNTHETIC_OPTIONS if synthetic else FOLDER_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        kind = "synthetic data" if synthetic else "data folders"
        raise TypeError(f"unknown options for {kind}: {unknown}; known: {sorted(allowed)}")
    if synthetic:
        return make_synthetic_sites(num_sites, seed=seed, image_size=image_size, val_fraction=val_fraction,
                                    **options)
    scan = scan_data(Path(data), channel=options.get("channel", 0), progress=progress)
    if scan.problems:
        raise DataError(scan.problems)
    return [_site_data(site, image_size=image_size, seed=seed, val_fraction=val_fraction, **options)
            for site in scan.sites]
