"""Training augmentation a recipe names, as MONAI dictionary transforms applied per example on the site.

`flap` follows FLAP-SAM's `RandomGenerator` (`datasets/dataset.py:280-350`), in its order:

| step | FLAP-SAM                                                    | here (MONAI)                                   |
| ---- | ----------------------------------------------------------- | ---------------------------------------------- |
| 1    | p 0.5: rot90 by k in 0..3, then a flip on a random axis      | OneOf(RandRotate90d + RandAxisFlipd, identity) |
| 2    | p 0.5: rotate by an integer angle in [-15, 15) deg, nearest  | RandRotated(+-15 deg, nearest, zero padding)   |
| 3    | p 0.5: gamma in [0.5, 3.5), image ** (1 / gamma)             | RandInverseGammad (MONAI's AdjustContrast)     |
| 4    | p 0.5: erase a box of 2-5 % area, aspect 0.3-3.3, noise fill, label 0 there | RandErasingd                    |
| 5    | 2 of: shear x/y +-0.3, scale 0.8-1.2, translate x/y +-20 %, posterize, contrast, brightness 0.7-1.3, sharpness, identity | SomeOf(2) of RandAffined (shear, translate), RandZoomd, RandScaleIntensityFixedMeand, RandScaleIntensityd, Identityd |

Differences, all small: rotation angles are continuous, not whole degrees; scaling is about the
centre, not the top-left corner; posterize and sharpness have no MONAI transform and are left out
(so step 5 picks 2 of 8); intensities are clipped to 0..255 once at the end instead of after each
PIL operation. Steps 3 and 4 are written here (each a few lines on MONAI's `RandomizableTransform`):
MONAI's RandAdjustContrast draws the exponent itself uniformly, where FLAP-SAM draws gamma and uses
1/gamma, and RandCoarseDropout draws each side independently and fills every key alike, where
FLAP-SAM draws area and aspect and zeroes the label.

Images are float [3, S, S] in 0..255 and masks int64 [S, S], as `fedmed.data` gives them.
Geometric transforms move image and mask together (mask by nearest neighbour).
"""

from __future__ import annotations

import math

import torch
from monai.transforms import (
    AdjustContrast,
    Compose,
    EnsureTyped,
    Identityd,
    MapTransform,
    OneOf,
    RandAffined,
    RandAxisFlipd,
    RandomizableTransform,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandZoomd,
    ScaleIntensityRanged,
    SomeOf,
)
from torch.utils.data import Dataset

AUGMENTATIONS = ("none", "flap")
KEYS = ("image", "mask")
BOTH = ("bilinear", "nearest")  # interpolation for image, mask


class RandInverseGammad(RandomizableTransform, MapTransform):
    """With probability `prob`: gamma ~ U[low, high), image -> image ** (1 / gamma) over its own range."""

    def __init__(self, keys: str = "image", *, prob: float = 0.5, gamma: tuple[float, float] = (0.5, 3.5)) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.gamma = gamma

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return dict(data)
        exponent = 1.0 / self.R.uniform(*self.gamma)
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = AdjustContrast(gamma=exponent)(out[key])
        return out


class RandErasingd(RandomizableTransform, MapTransform):
    """With probability `prob`: a box of `area` x the image, aspect `ratio`, filled with uniform noise
    in 0..255 (the same for every channel), and the mask set to background inside it."""

    def __init__(self, *, prob: float = 0.5, area: tuple[float, float] = (0.02, 0.05),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> None:
        MapTransform.__init__(self, KEYS)
        RandomizableTransform.__init__(self, prob)
        self.area, self.ratio = area, ratio

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, rows, cols) of a box drawn as FLAP-SAM draws it (redrawn until it fits)."""
        while True:
            size = self.R.uniform(*self.area) * height * width
            aspect = self.R.uniform(*self.ratio)
            cols, rows = int(math.sqrt(size * aspect)), int(math.sqrt(size / aspect))
            if cols < width and rows < height:
                break
        return int(self.R.randint(0, height - rows + 1)), int(self.R.randint(0, width - cols + 1)), rows, cols

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        out = dict(data)
        if not self._do_transform:
            return out
        image, mask = out["image"].clone(), out["mask"].clone()
        top, left, rows, cols = self.box(*image.shape[-2:])
        noise = torch.as_tensor(self.R.uniform(0.0, 255.0, size=(rows, cols)), dtype=image.dtype)
        image[..., top:top + rows, left:left + cols] = noise
        mask[..., top:top + rows, left:left + cols] = 0
        out["image"], out["mask"] = image, mask
        return out


def flap_augmentation(image_size: int) -> Compose:
    """FLAP-SAM's training augmentation for images of `image_size` px (table above)."""
    shift = 0.2 * image_size
    some_of = [
        RandAffined(KEYS, prob=1.0, shear_range=(0.3, 0.0), mode=BOTH, padding_mode="zeros"),
        RandAffined(KEYS, prob=1.0, shear_range=(0.0, 0.3), mode=BOTH, padding_mode="zeros"),
        RandZoomd(KEYS, prob=1.0, min_zoom=1 / 1.2, max_zoom=1 / 0.8, mode=BOTH, padding_mode="constant"),
        RandAffined(KEYS, prob=1.0, translate_range=(0.0, shift), mode=BOTH, padding_mode="zeros"),
        RandAffined(KEYS, prob=1.0, translate_range=(shift, 0.0), mode=BOTH, padding_mode="zeros"),
        RandScaleIntensityFixedMeand("image", factors=0.3, preserve_range=True, prob=1.0),
        RandScaleIntensityd("image", factors=0.3, prob=1.0),
        Identityd(KEYS),
    ]
    return Compose([
        OneOf([Compose([RandRotate90d(KEYS, prob=1.0, max_k=4), RandAxisFlipd(KEYS, prob=1.0)]), Identityd(KEYS)],
              weights=[0.5, 0.5]),
        RandRotated(KEYS, range_x=math.radians(15), prob=0.5, mode="nearest", padding_mode="zeros"),
        RandInverseGammad("image", prob=0.5),
        RandErasingd(prob=0.5),
        SomeOf(some_of, num_transforms=2),
        ScaleIntensityRanged("image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=255.0, clip=True),
        EnsureTyped(KEYS, data_type="tensor", track_meta=False),
    ])


class AugmentedDataset(Dataset):
    """`dataset` with `transform` applied to each item's image and mask; other keys pass through.

    The transform's random state is seeded once from `seed`, so a run is repeatable for a fixed
    order of items (fedmed's loaders run in the main process).
    """

    def __init__(self, dataset: Dataset, transform: Compose, *, seed: int) -> None:
        self.dataset, self.transform = dataset, transform
        self.transform.set_random_state(seed=seed % (2**32))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        out = self.transform({"image": item["image"], "mask": item["mask"][None].float()})
        item["image"] = out["image"].float().contiguous()
        item["mask"] = out["mask"][0].round().long().contiguous()
        return item


def augmented(dataset: Dataset, kind: str, *, image_size: int, seed: int) -> Dataset:
    """`dataset` under augmentation `kind` ("none" returns it unchanged)."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}")
    if kind == "none":
        return dataset
    return AugmentedDataset(dataset, flap_augmentation(image_size), seed=seed)
