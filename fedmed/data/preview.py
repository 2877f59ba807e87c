"""A PNG contact sheet of a federation: per site, a few images and the same images with masks on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fedmed.data.types import SiteData

# background transparent, then one colour per class
PALETTE = np.array([[0, 0, 0], [255, 64, 64], [64, 160, 255], [255, 210, 0], [80, 220, 120],
                    [200, 90, 255], [255, 140, 0], [0, 220, 220]], dtype=np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 [S, S, 3] of `image` (float [3, S, S], 0..255) with classes of `mask` tinted."""
    rgb = np.transpose(image, (1, 2, 0)).astype(np.float32)
    colours = PALETTE[np.clip(mask, 0, len(PALETTE) - 1)]
    tint = (mask > 0)[..., None] * alpha
    return np.clip(rgb * (1 - tint) + colours * tint, 0, 255).astype(np.uint8)


def contact_sheet(sites: list[SiteData], per_site: int = 4, split: str = "train") -> Image.Image:
    """Rows of sites; each shows `per_site` images, each followed by its overlay."""
    label_h = 14
    first = getattr(sites[0], split)[0]["image"]
    s = first.shape[-1]
    sheet = Image.new("RGB", (2 * per_site * s, len(sites) * (s + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, site in enumerate(sites):
        data = getattr(site, split)
        y = row * (s + label_h)
        draw.text((2, y + 1), f"{site.name} ({len(site.train)} train, {len(site.val)} val; "
                              f"{', '.join(site.class_names[1:])})", fill="black")
        for col in range(min(per_site, len(data))):
            item = data[col]
            image, mask = item["image"].numpy(), item["mask"].numpy()
            plain = np.transpose(image, (1, 2, 0)).clip(0, 255).astype(np.uint8)
            sheet.paste(Image.fromarray(plain), (2 * col * s, y + label_h))
            sheet.paste(Image.fromarray(overlay(image, mask)), ((2 * col + 1) * s, y + label_h))
    return sheet


def save_preview(sites: list[SiteData], out: Path, per_site: int = 4) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(sites, per_site).save(out)
    return out
