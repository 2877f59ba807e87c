"""Volumes served as 2D slices along their last axis: the part NIfTI and DICOM share.

A format reads one case into an image volume already normalised to 0..255 and a label volume of
class indices, both [X, Y, Z] in the closest canonical (RAS) orientation; this module selects the
slices, resizes them and keeps a case's selected slices in memory (uint8) from its first access.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmed.data.transforms import image_to_tensor, mask_to_tensor
from fedmed.data.types import Case, CaseDataset, LoadOptions


@dataclass(kw_only=True)
class VolumeCase(Case):
    foreground: np.ndarray | None = None  # bool per slice, filled by the scan


def select_slices(case: VolumeCase, *, drop_empty: bool, empty_keep_fraction: float, seed: int) -> list[int]:
    """Slices with foreground, plus all, none or a deterministic fraction of the empty ones.

    The fraction is drawn from the site's own `seed` and the case's name (not a secret: which empty
    slices train is no privacy matter, and it must be the same on every load).
    """
    fg = case.foreground
    keep = [int(k) for k in np.flatnonzero(fg)]
    empty = np.flatnonzero(~fg)
    n_empty = 0 if drop_empty else int(round(len(empty) * min(max(empty_keep_fraction, 0.0), 1.0)))
    if n_empty:
        rng = np.random.default_rng([seed, *case.name.encode()])
        keep += [int(k) for k in rng.choice(empty, size=n_empty, replace=False)]
    return sorted(keep)


class VolumeSliceDataset(CaseDataset):
    """Selected 2D slices of scanned volume cases (items as in `CaseDataset`; `id` is `CASE:SLICE`).

    Subclasses implement `read_case(case) -> (image float [X, Y, Z] in 0..255, labels int [X, Y, Z])`.
    """

    def __init__(self, cases: list[VolumeCase], *, site: str, options: LoadOptions):
        self.cases, self.site, self.image_size = list(cases), site, options.image_size
        self.slices = [select_slices(c, drop_empty=options.drop_empty, seed=options.data_seed,
                                     empty_keep_fraction=options.empty_keep_fraction) for c in self.cases]
        self.items = [(ci, j) for ci, ks in enumerate(self.slices) for j in range(len(ks))]
        self.item_case = [ci for ci, _ in self.items]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def read_case(self, case: VolumeCase) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _load(self, ci: int) -> tuple[torch.Tensor, torch.Tensor]:
        ks = self.slices[ci]
        image, label = self.read_case(self.cases[ci])
        images = torch.stack([image_to_tensor(image[:, :, k], self.image_size)[0] for k in ks])
        masks = torch.stack([mask_to_tensor(label[:, :, k], self.image_size) for k in ks])
        return images.round().to(torch.uint8), masks.to(torch.uint8)

    def __getitem__(self, i: int) -> dict:
        ci, j = self.items[i]
        if ci not in self._cache:
            self._cache[ci] = self._load(ci)
        images, masks = self._cache[ci]
        return {
            "image": images[j].float().expand(3, -1, -1).contiguous(),
            "mask": masks[j].long(),
            "site": self.site,
            "id": f"{self.cases[ci].name}:{self.slices[ci][j]}",
        }
