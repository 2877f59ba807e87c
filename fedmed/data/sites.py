"""`load_sites`: the one entry point from a `--data` argument to the sites of a federation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedmed.data.check import TEST_FRACTION, VAL_FRACTION, SiteScan, scan_data
from fedmed.data.split import SIDES, settle_split, split_file_for
from fedmed.data.synthetic import SYNTHETIC_DATA, make_synthetic_sites
from fedmed.data.types import DataError, LoadOptions, SiteData

SYNTHETIC_OPTIONS = {"samples_per_site", "num_classes"}
FOLDER_OPTIONS = {"drop_empty", "empty_keep_fraction", "ct_window", "channel"}


def _site_data(site: SiteScan, *, split_dir: str | Path | None, val_fraction: float, test_fraction: float,
               options: LoadOptions) -> SiteData:
    index = site.index
    split, problems = settle_split(index, site=site.name, split_file=split_file_for(split_dir, site.name),
                                   val_fraction=val_fraction, test_fraction=test_fraction, make=True)
    if problems:
        raise DataError(problems)
    by_name = {c.name: c for c in index.cases}
    parts = {side: site.format.dataset(index, [by_name[n] for n in split.sides[side]], site.name, options)
             for side in SIDES}
    return SiteData(name=site.name, **parts, num_classes=index.classes.num_classes,
                    class_names=site.class_names, split=split.info(site.patients()))


def load_sites(data: str | Path, *, image_size: int = 128, split_dir: str | Path | None = None,
               data_seed: int = 0, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
               num_sites: int = 3, progress: Callable[[str, int, int], None] | None = None,
               **options) -> list[SiteData]:
    """The sites of a federation, each split at patient level into train, val and test.

    `data` is "synthetic" or "synthetic-noniid" (the built-in federations of `num_sites` sites,
    `fedmed.data.synthetic`, generated from `data_seed`, split by picture number; options
    `samples_per_site`, `num_classes`), one dataset folder (one
    site named after it) or a folder of dataset folders (one site each, sorted). Folders are checked
    whole first: any problem raises `DataError` listing all. A folder site's split is the dataset's
    own (`splits.json`, nnU-Net `splits_final.json`) or the one kept in `split_dir` (drawn with a
    CSPRNG on the first load and written there; `split_dir=None`: drawn anew each load, kept nowhere).
    `data_seed` is the site's own: it never comes from a server. Volume options: `drop_empty`,
    `empty_keep_fraction`, `ct_window` (HU), `channel`. `progress(site, done, total)` follows the check.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                         "and leave some data for training")
    synthetic = str(data) in SYNTHETIC_DATA
    allowed = SYNTHETIC_OPTIONS if synthetic else FOLDER_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        kind = "synthetic data" if synthetic else "data folders"
        raise TypeError(f"unknown options for {kind}: {unknown}; known: {sorted(allowed)}")
    if synthetic:
        return make_synthetic_sites(num_sites, seed=data_seed, image_size=image_size, val_fraction=val_fraction,
                                    test_fraction=test_fraction, profile=SYNTHETIC_DATA[str(data)], **options)
    load = LoadOptions(image_size=image_size, data_seed=data_seed, **options)
    scan = scan_data(Path(data), channel=load.channel, progress=progress, split_dir=split_dir,
                     val_fraction=val_fraction, test_fraction=test_fraction)
    if scan.problems:
        raise DataError(scan.problems)
    return [_site_data(site, split_dir=split_dir, val_fraction=val_fraction, test_fraction=test_fraction,
                       options=load) for site in scan.sites]
