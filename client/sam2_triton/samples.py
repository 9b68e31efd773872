"""A generated sample picture, to try the SDK (and to test and benchmark it) without a photo."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["sample_image"]


def sample_image(h: int = 600, w: int = 800) -> np.ndarray:
    """A generated RGB uint8 ``[h, w, 3]`` scene: sky, ground, a house, a sun, a tree."""
    img = Image.new("RGB", (w, h), (135, 190, 235))
    d = ImageDraw.Draw(img)
    d.rectangle([0, int(h * 0.65), w, h], fill=(90, 150, 70))
    d.ellipse([int(w * 0.75), int(h * 0.08), int(w * 0.9), int(h * 0.28)], fill=(250, 210, 60))
    d.rectangle([int(w * 0.2), int(h * 0.4), int(w * 0.5), int(h * 0.75)], fill=(200, 80, 60))
    d.polygon(
        [
            (int(w * 0.17), int(h * 0.4)),
            (int(w * 0.35), int(h * 0.22)),
            (int(w * 0.53), int(h * 0.4)),
        ],
        fill=(110, 60, 50),
    )
    d.rectangle([int(w * 0.31), int(h * 0.58), int(w * 0.39), int(h * 0.75)], fill=(80, 50, 30))
    d.rectangle([int(w * 0.68), int(h * 0.5), int(w * 0.71), int(h * 0.8)], fill=(100, 70, 40))
    d.ellipse([int(w * 0.6), int(h * 0.3), int(w * 0.8), int(h * 0.55)], fill=(40, 120, 50))
    rng = np.random.default_rng(0)
    arr = np.asarray(img, np.float32) + rng.normal(0, 4, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)
