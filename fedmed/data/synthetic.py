"""The built-in synthetic federation: K sites of 2D "scans", deterministic from a seed.

Each site has a scanner profile (contrast curve, gain, multiplicative bias field, Gaussian or Rician
noise, blur and acquisition resolution) and an anatomy profile (structure size, outline irregularity,
elongation, 1-3 structures a picture). A picture is a body of textured tissue with distractors that
a threshold cannot tell from the target: bright vessel-like curves, bright dots, dark fat patches and
a fainter decoy blob the size of a structure. Classes (up to 4):
1 organ (bright, mottled blob), 2 lesion (darker blob inside an organ), 3 cyst (dark, smooth blob).

Sample i of site k depends only on (seed, k, i), so it is generated lazily and the same everywhere.
The seed is the site's own data setting (default 0), never a server's; the split is by picture
number, so it follows from the seed too. Each picture is its own patient.

Two federations by name (`SYNTHETIC_DATA`, the `--data` values): `synthetic`, whose sites differ
as scanners of one kind do, and `synthetic-noniid`, strongly non-IID as different scanners and
populations are: the same scanner profiles, but every other site sees tissue with its contrast
inverted (organs dark on bright tissue, as T1 against T2, the air outside the body dark in both),
and structure size, elongation and outline irregularity spread wider.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from fedmed.data.drawing import (
    blob, box, draw_curves, gaussian_blur, grid, random_curve, smooth_field, soft_inside,
)
from fedmed.data.types import Case, CaseDataset, SiteData, SplitInfo

CLASS_NAMES = ("background", "organ", "lesion", "cyst")
REFERENCE_SIZE = 128  # px; sizes below are given at this size and scale with image_size
SYNTHETIC_DATA = {"synthetic": "default", "synthetic-noniid": "noniid"}  # `--data` name -> profile set
_SCANNERS = {"gamma": (0.7, 1.4), "gain": (0.75, 1.0), "bias": (0.1, 0.35), "noise": (0.025, 0.07),
             "blur": (0.3, 1.2), "downsample": (1.0, 2.0)}
# Each profile set's spreads over the sites (low, high): the same scanners, anatomy spread wider in
# "noniid" (where every other site also inverts contrast, `site_profiles`).
_SPREADS = {
    "default": {**_SCANNERS, "radius": (0.095, 0.14), "irregularity": (0.05, 0.3), "elongation": (1.0, 1.6)},
    "noniid": {**_SCANNERS, "radius": (0.075, 0.16), "irregularity": (0.03, 0.45), "elongation": (1.0, 2.2)},
}


@dataclass(frozen=True)
class SiteProfile:
    """How one synthetic site's scanner and patients differ from the others'."""

    name: str
    gamma: float  # contrast curve applied to tissue values in 0..1
    gain: float  # brightness multiplier
    bias: float  # amplitude of the smooth multiplicative bias field
    noise: float  # noise deviation, fraction of full scale
    rician: bool  # magnitude (MR-like) noise instead of Gaussian
    blur: float  # px at the reference size
    downsample: float  # acquisition resolution is image_size / downsample
    radius: float  # mean structure radius, fraction of the image size
    irregularity: float  # relative wobble of the outlines
    elongation: float  # largest axis ratio of the structures
    max_count: int  # 1..3 structures a picture
    invert: bool = False  # tissue contrast inverted (the body's inside; the air outside stays dark)


def _spread(rng: np.random.Generator, lo: float, hi: float, k: int) -> np.ndarray:
    """k values spread evenly over [lo, hi] in random order, so every pair of sites differs."""
    return rng.permutation(np.linspace(lo, hi, k) if k > 1 else np.array([(lo + hi) / 2]))


def site_profiles(num_sites: int, seed: int = 0, profile: str = "default") -> list[SiteProfile]:
    """The scanner and anatomy profiles of `num_sites` sites, from the profile set `profile`
    ("default", or "noniid": wider spreads, and every other site, site-1 first, inverts contrast)."""
    if num_sites < 1:
        raise ValueError(f"num_sites must be at least 1, not {num_sites}")
    if profile not in _SPREADS:
        raise ValueError(f"unknown synthetic profile {profile!r}; choose one of {sorted(_SPREADS)}")
    rng = np.random.default_rng([seed, 7919])
    k = num_sites
    cols = {key: _spread(rng, low, high, k) for key, (low, high) in _SPREADS[profile].items()}
    counts = rng.permutation([1 + i % 3 for i in range(k)])
    return [
        SiteProfile(name=f"site-{i}", rician=bool(i % 2), max_count=int(counts[i]),
                    invert=profile == "noniid" and bool(i % 2), **{key: float(v[i]) for key, v in cols.items()})
        for i in range(k)
    ]


def _place(rng, body, radius, taken, size) -> tuple[float, float] | None:
    """A centre whose blob lies inside the body, clear of the structures already placed (or None)."""
    for _ in range(60):
        c = rng.uniform(0.2, 0.8, 2) * size
        edge = [(c[0] + dy * 1.2 * radius, c[1] + dx * 1.2 * radius) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        if any(not (0 <= y < size and 0 <= x < size) or body[int(y), int(x)] < 0.99 for y, x in [c, *edge]):
            continue
        if all(np.hypot(c[0] - y, c[1] - x) > radius + r + 0.03 * size for y, x, r in taken):
            return float(c[0]), float(c[1])
    return None


def _tissue(p: SiteProfile, rng: np.random.Generator, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free tissue values (0..1) and the label map of one picture."""
    px = size / REFERENCE_SIZE
    yy, xx = grid(size)
    centre = (size / 2 + rng.normal(0, 2 * px), size / 2 + rng.normal(0, 2 * px))
    body = soft_inside(blob(yy, xx, centre, size * rng.uniform(0.4, 0.46), aspect=rng.uniform(0.9, 1.15),
                            angle=rng.uniform(0, np.pi), irregularity=0.08, rng=rng), 2 * px)
    fine = smooth_field(rng, size, 2.5 * px)  # tissue grain, stronger inside organs and lesions
    tissue = 0.38 + 0.07 * smooth_field(rng, size, size / 6) + 0.035 * fine
    img = 0.04 + body * (tissue - 0.04)
    label = np.zeros((size, size), dtype=np.int64)

    def add(c, r, delta, texture=0.0, *, aspect=1.0, irregularity=0.0, cut=None):
        """Draw a blob of contrast `delta`; return its window and its distance field there."""
        win = box(c, r * aspect * (1 + 2.3 * irregularity) + 2 * px, size)
        dist = blob(yy[win], xx[win], c, r, aspect=aspect, angle=rng.uniform(0, np.pi),
                    irregularity=irregularity, rng=rng)
        if cut is not None:  # keep inside another blob: `cut` is its distance field, full size
            dist = np.maximum(dist, cut[win])
        img[win] += soft_inside(dist, px) * body[win] * (delta + texture * fine[win])
        return win, np.where(body[win] > 0.5, dist, np.inf)  # nothing is labelled outside the body

    for _ in range(rng.integers(1, 4)):  # dark fat patches
        add(rng.uniform(0.25, 0.75, 2) * size, size * rng.uniform(0.05, 0.11), -0.12, aspect=1.3, irregularity=0.3)
    for _ in range(rng.integers(2, 6)):  # calcification-like dots
        add(rng.uniform(0.2, 0.8, 2) * size, rng.uniform(1.5, 3.5) * px, 0.32)
    vessels = [random_curve(rng, size) for _ in range(rng.integers(2, 5))]
    img += 0.3 * body * draw_curves(vessels, size, rng.uniform(0.7, 1.3) * px)
    taken: list[tuple[float, float, float]] = []
    kinds = [1] * int(rng.integers(1, p.max_count + 1)) + [0]  # organs, then one decoy (0)
    if num_classes > 3 and rng.random() < 0.8:
        kinds.append(3)
    for kind in kinds:
        r = size * p.radius * rng.uniform(0.75, 1.25) * (0.7 if kind == 3 else 1.0)
        c = _place(rng, body, r, taken, size)
        if c is None:
            continue
        taken.append((*c, r))
        aspect = rng.uniform(1.0, p.elongation)
        if kind == 0:
            add(c, r, 0.13, aspect=aspect, irregularity=0.1)
        elif kind == 3:
            win, dist = add(c, r, -0.24, aspect=aspect, irregularity=0.1)
            label[win][dist < 0] = 3
        else:
            win, dist = add(c, r, 0.3, 0.04, aspect=aspect, irregularity=p.irregularity)
            label[win][dist < 0] = 1
            if num_classes > 2 and rng.random() < 0.8:
                off = rng.normal(0, 0.2 * r, 2)
                inner_c = (c[0] + off[0], c[1] + off[1])
                organ = np.full((size, size), np.inf, dtype=np.float32)  # the lesion stays 2 px inside
                organ[win] = dist + 2 * px
                iwin, idist = add(inner_c, r * rng.uniform(0.3, 0.5), -0.2, 0.03, aspect=rng.uniform(1.0, 1.4),
                                  irregularity=0.25, cut=organ)
                label[iwin][idist < 0] = 2
    if p.invert:  # inside the body, bright becomes dark: 0.9 - value (tissue ~0.56, organs ~0.26)
        img = 0.04 + body * np.clip(0.9 - img, 0.0, None)
    return np.clip(img, 0.0, 1.0), label


def _scan(p: SiteProfile, rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """What the site's scanner makes of the tissue: 0..255 float32 [S, S]."""
    size = tissue.shape[0]
    x = gaussian_blur(tissue, p.blur * size / REFERENCE_SIZE)
    low = max(8, int(round(size / p.downsample)))
    x = F.interpolate(torch.from_numpy(x)[None, None], size=(low, low), mode="area")[0, 0].numpy()
    x = x * np.clip(1.0 + p.bias * smooth_field(rng, low, low * 0.6), 0.3, None)
    x = np.clip(x, 0.0, None) ** p.gamma
    n1 = rng.standard_normal(x.shape).astype(np.float32) * p.noise
    if p.rician:
        x = np.hypot(x + n1, rng.standard_normal(x.shape).astype(np.float32) * p.noise)
    else:
        x = x + n1
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None],
                      size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(x * p.gain * 255.0, 0.0, 255.0).astype(np.float32)


def synthetic_sample(p: SiteProfile, *, seed: int, site: int, index: int, image_size: int,
                     num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Picture `index` of site number `site`: (image float32 [S, S] in 0..255, mask int64 [S, S])."""
    rng = np.random.default_rng([seed, site, index])
    tissue, label = _tissue(p, rng, image_size, num_classes)
    return _scan(p, rng, tissue), label


class SyntheticDataset(CaseDataset):
    """Pictures `indices` of one synthetic site, generated on first access and then kept."""

    def __init__(self, profile: SiteProfile, site: int, indices: range, *, seed: int, image_size: int,
                 num_classes: int):
        self.profile, self.site, self.indices = profile, site, indices
        self.seed, self.image_size, self.num_classes = seed, image_size, num_classes
        self.cases = [Case(name=f"{profile.name}/{index:04d}") for index in indices]
        self.item_case = list(range(len(indices)))
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        if i not in self._cache:
            image, mask = synthetic_sample(self.profile, seed=self.seed, site=self.site, index=index,
                                           image_size=self.image_size, num_classes=self.num_classes)
            self._cache[i] = torch.from_numpy(image), torch.from_numpy(mask)
        image, mask = self._cache[i]
        return {"image": image.expand(3, -1, -1).clone(), "mask": mask.clone(),
                "site": self.profile.name, "id": self.cases[i].name}


def make_synthetic_sites(num_sites: int = 3, *, seed: int = 0, image_size: int = 128, samples_per_site: int = 80,
                         num_classes: int = 2, val_fraction: float = 0.2, test_fraction: float = 0.2,
                         profile: str = "default") -> list[SiteData]:
    """The synthetic federation: `num_sites` sites of `samples_per_site` pictures to train and validate
    on (the last `val_fraction` of them validate), plus `test_fraction * samples_per_site` test
    pictures numbered after them (generated only when read, so they change nothing else).

    `num_classes` is 2 (organ vs background), 3 (+ lesion inside organs) or 4 (+ cysts); `profile`
    the sites' profile set (`site_profiles`).
    """
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"synthetic data has 2 to {len(CLASS_NAMES)} classes, not {num_classes}")
    if samples_per_site < 2:
        raise ValueError(f"samples_per_site must be at least 2, not {samples_per_site}")
    n_val = min(max(1, int(round(samples_per_site * val_fraction))), samples_per_site - 1)
    n_train = samples_per_site - n_val
    n_test = int(round(samples_per_site * test_fraction))
    ranges = {"train": range(n_train), "val": range(n_train, samples_per_site),
              "test": range(samples_per_site, samples_per_site + n_test)}
    counts = {side: len(r) for side, r in ranges.items()}
    split = SplitInfo(f"synthetic: by picture number, from the data seed {seed}", counts, counts)
    sites = []
    for k, site in enumerate(site_profiles(num_sites, seed, profile)):
        common = dict(seed=seed, image_size=image_size, num_classes=num_classes)
        sites.append(SiteData(
            name=site.name, **{side: SyntheticDataset(site, k, r, **common) for side, r in ranges.items()},
            num_classes=num_classes, class_names=list(CLASS_NAMES[:num_classes]), split=split,
        ))
    return sites
