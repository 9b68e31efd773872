"""Pictures of results: masks over the image, with the prompts drawn on top (pillow only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Distinct, colour-blind-friendly colours (Okabe-Ito), RGB.
PALETTE = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
)


def overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    alpha: float = 0.5,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Blend masks onto an image and draw the prompts.

    image: ``[H, W, 3]`` uint8 RGB. masks: K boolean ``[H, W]`` masks (one colour each:
    ``colors[k]``, or the palette in turn).
    points: ``[P, 2]`` xy pixels, labels ``[P]`` (1 = green foreground, 0 = red background),
    boxes ``[B, 4]`` xyxy. Returns an RGB PIL image of size W x H.
    """
    out = image.astype(np.float32).copy()
    for i, mask in enumerate(masks):
        color = np.array(colors[i] if colors else PALETTE[i % len(PALETTE)], np.float32)
        m = np.asarray(mask, bool)
        out[m] = out[m] * (1 - alpha) + color * alpha
    picture = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(3, round(min(image.shape[:2]) / 120))
    for i, box in enumerate(
        np.zeros((0, 4)) if boxes is None else np.asarray(boxes).reshape(-1, 4)
    ):
        draw.rectangle(
            [float(v) for v in box], outline=PALETTE[i % len(PALETTE)], width=max(2, radius // 2)
        )
    if points is not None:
        pts = np.asarray(points).reshape(-1, 2)
        labs = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        for (x, y), lab in zip(pts, labs):
            fill = (0, 200, 0) if lab == 1 else (220, 0, 0)
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius],
                fill=fill,
                outline=(255, 255, 255),
                width=max(1, radius // 3),
            )
    return picture


def label_image(masks: Sequence[np.ndarray], hw: tuple[int, int]) -> Image.Image:
    """One 8-bit PNG for K objects: 0 = background, 255 for a single object, else k = object k.

    Later objects are drawn over earlier ones where they overlap.
    """
    out = np.zeros(hw, np.uint8)
    for k, mask in enumerate(masks, start=1):
        out[np.asarray(mask, bool)] = 255 if len(masks) == 1 else min(k, 254)
    return Image.fromarray(out, mode="L")
