"""Prompt validation and decoder request planning (pure numpy, no transport).

Every check runs before anything is sent, and every error names the offending input and what
was expected. Valid prompts become ``WirePrompt``s in the decoder's 1024x1024 frame, which
``plan_decode`` groups by point count and splits into bounded chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import spec, transforms
from .errors import InvalidPromptError
from .types import Prompt

logger = logging.getLogger(__name__)

_BOX_LABELS = np.array([2, 3], dtype=np.int32)
_MASK_HW = (spec.LOW_RES_SIZE, spec.LOW_RES_SIZE)


@dataclass(frozen=True, eq=False)
class WirePrompt:
    """One validated prompt: ``coords`` ``(P, 2)`` float32 in the model frame (box corners first),
    ``labels`` ``(P,)`` int32 in {0, 1, 2, 3}, ``mask`` ``(256, 256)`` float32 or ``None``."""

    coords: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None


@dataclass(frozen=True, eq=False)
class DecodeChunk:
    """One decoder request: ``n`` prompts of ``P`` points each.

    ``indices`` ``[n]`` positions in the caller's prompt list; ``point_coords`` ``[n, P, 2]``
    float32; ``point_labels`` ``[n, P]`` int32; ``mask_input`` ``[M, 1, 256, 256]`` float32 and
    ``has_mask_input`` ``[M]`` float32 with ``M`` 1 (shared) or ``n``.
    """

    indices: np.ndarray
    point_coords: np.ndarray
    point_labels: np.ndarray
    mask_input: np.ndarray
    has_mask_input: np.ndarray


def _array(value: object, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested sequences, unconvertible objects
        raise InvalidPromptError(
            f"{name} must be a numeric array, got {type(value).__name__} that is not one ({exc})"
        ) from exc


def _float_array(value: object, name: str) -> np.ndarray:
    raw = _array(value, name)
    if raw.dtype.kind not in "biuf":  # not str, object (e.g. ints beyond int64), complex
        raise InvalidPromptError(
            f"{name} must be a numeric (int or float) array, got {type(value).__name__} of "
            f"dtype {raw.dtype}"
        )
    return raw.astype(np.float64)


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        idx = tuple(int(i) for i in bad[0])
        raise InvalidPromptError(
            f"{name}{list(idx)} is {arr[idx]!r}; coordinates and mask values must be finite "
            "(no NaN or inf)"
        )


def _bounds(orig_hw: tuple[int, int], normalize: bool) -> tuple[float, float, str]:
    h, w = orig_hw
    if normalize:
        return float(w), float(h), f"the {w}x{h} (width x height) image"
    return 1.0, 1.0, "the normalized range [0, 1] (normalize_coords=False)"


def _points(p: Prompt, where: str, orig_hw: tuple[int, int], normalize: bool):
    if p.point_coords is None:
        if p.point_labels is not None:
            raise InvalidPromptError(f"{where}.point_labels given without point_coords")
        return None, None
    if p.point_labels is None:
        raise InvalidPromptError(
            f"{where}.point_labels must be supplied if {where}.point_coords is supplied"
        )
    coords = _float_array(p.point_coords, f"{where}.point_coords")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] < 1:
        raise InvalidPromptError(
            f"{where}.point_coords must have shape (P, 2) with P >= 1 (x, y per point), "
            f"got shape {coords.shape}"
        )
    if coords.shape[0] > spec.MAX_CLICKS_PER_PROMPT:
        raise InvalidPromptError(
            f"{where}.point_coords holds {coords.shape[0]} points; a prompt takes at most "
            f"spec.MAX_CLICKS_PER_PROMPT = {spec.MAX_CLICKS_PER_PROMPT} (plus a box)"
        )
    _check_finite(coords, f"{where}.point_coords")
    labels = _array(p.point_labels, f"{where}.point_labels")
    if labels.dtype.kind not in "biuf":
        raise InvalidPromptError(
            f"{where}.point_labels must be integers 0/1, got dtype {labels.dtype}"
        )
    if labels.shape != (coords.shape[0],):
        raise InvalidPromptError(
            f"{where}.point_labels must have shape ({coords.shape[0]},) to match "
            f"point_coords {coords.shape}, got shape {labels.shape}"
        )
    bad = np.flatnonzero(~np.isin(labels, (0, 1)))
    if bad.size:
        i = int(bad[0])
        raise InvalidPromptError(
            f"{where}.point_labels[{i}] = {labels[i]!r}; labels must be 1 (foreground) or "
            "0 (background) (box corners go in `box`, not as labels 2/3)"
        )
    max_x, max_y, frame = _bounds(orig_hw, normalize)
    outside = (coords[:, 0] < 0) | (coords[:, 0] > max_x) | (coords[:, 1] < 0)
    outside |= coords[:, 1] > max_y
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        x, y = coords[i]
        raise InvalidPromptError(
            f"{where}.point_coords[{i}] = ({x:g}, {y:g}) lies outside {frame}: expected "
            f"0 <= x <= {max_x:g} and 0 <= y <= {max_y:g}"
        )
    wire = transforms.transform_coords(
        coords.astype(np.float32), orig_hw, normalize=normalize, size=spec.IMAGE_SIZE
    )
    return np.asarray(wire, dtype=np.float32).reshape(-1, 2), labels.astype(np.int32)


def _box(p: Prompt, where: str, orig_hw: tuple[int, int], normalize: bool):
    if p.box is None:
        return None
    box = _float_array(p.box, f"{where}.box")
    if box.shape not in ((4,), (1, 4)):
        raise InvalidPromptError(
            f"{where}.box must have shape (4,) as x0, y0, x1, y1, got shape {box.shape}"
        )
    box = box.reshape(4)
    _check_finite(box, f"{where}.box")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise InvalidPromptError(
            f"{where}.box = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is inverted or empty: expected "
            "x0 < x1 and y0 < y1 (xyxy order)"
        )
    max_x, max_y, frame = _bounds(orig_hw, normalize)
    if x0 < 0 or y0 < 0 or x1 > max_x or y1 > max_y:
        raise InvalidPromptError(
            f"{where}.box = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside {frame}: expected "
            f"0 <= x <= {max_x:g} and 0 <= y <= {max_y:g}"
        )
    wire = transforms.transform_boxes(box.astype(np.float32)[None], orig_hw, normalize=normalize)
    return np.asarray(wire, dtype=np.float32).reshape(2, 2)


def _mask(p: Prompt, where: str) -> np.ndarray | None:
    if p.mask_input is None:
        return None
    mask = _float_array(p.mask_input, f"{where}.mask_input")
    if mask.shape not in ((1, *_MASK_HW), _MASK_HW):
        raise InvalidPromptError(
            f"{where}.mask_input must have shape (1, 256, 256) or (256, 256) (low-res logits), "
            f"got shape {mask.shape}"
        )
    mask = mask.reshape(_MASK_HW)
    _check_finite(mask, f"{where}.mask_input")
    return mask.astype(np.float32)


def validate_prompt(
    prompt: object, where: str, orig_hw: tuple[int, int], normalize_coords: bool = True
) -> WirePrompt:
    """Check one prompt against an image of ``orig_hw`` and convert it to the wire frame."""
    if not isinstance(prompt, Prompt):
        raise InvalidPromptError(
            f"{where} must be a sam2_triton.Prompt, got {type(prompt).__name__}"
        )
    coords, labels = _points(prompt, where, orig_hw, normalize_coords)
    box = _box(prompt, where, orig_hw, normalize_coords)
    mask = _mask(prompt, where)
    if coords is None and box is None:
        # SAM 2 would run a mask-only prompt without its padding point; the exported decoder
        # always pads (every other prompt kind needs it), so it cannot reproduce that exactly.
        raise InvalidPromptError(
            f"{where} has no points and no box: give point_coords + point_labels or a box "
            "(a mask_input alone is not supported; add the click that produced it)"
        )
    parts_c = [c for c in (box, coords) if c is not None]  # box corners before the clicks
    parts_l = [lb for lb in (_BOX_LABELS if box is not None else None, labels) if lb is not None]
    wire_coords = np.concatenate(parts_c, axis=0)
    wire_labels = np.concatenate(parts_l, axis=0).astype(np.int32)
    return WirePrompt(wire_coords, wire_labels, mask)


def box_prompts(boxes: np.ndarray, orig_hw: tuple[int, int]) -> list[WirePrompt]:
    """Detector boxes as SAM 2 box prompts, one per box, as ``SAM2ImagePredictor.predict(box=)``
    takes them (``_prep_prompts``: float32, ``transform_boxes``; labels 2, 3).

    Args:
        boxes: ``[N, 4]`` float32 xyxy in pixels of the image (a detector's output).
        orig_hw: the image's (H, W).

    Unlike :func:`validate_prompt` the boxes are not checked against the image: a detector's
    box may reach past its edge and SAM 2 takes it as it is. Raises InvalidPromptError for a
    non-finite box or a wrong shape.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidPromptError(
            f"boxes must have shape (N, 4) as x0, y0, x1, y1, got {boxes.shape}"
        )
    _check_finite(boxes, "boxes")
    wire = np.asarray(transforms.transform_boxes(boxes, orig_hw), dtype=np.float32)
    return [WirePrompt(w.reshape(2, 2), _BOX_LABELS.copy(), None) for w in wire.reshape(-1, 4)]


def validate_prompts(
    prompts: Sequence[object], orig_hw: tuple[int, int], normalize_coords: bool = True
) -> list[WirePrompt]:
    """Validate a non-empty sequence of prompts (errors name ``prompts[i]``)."""
    if len(prompts) == 0:
        raise InvalidPromptError("prompts is empty: give at least one Prompt")
    return [
        validate_prompt(p, f"prompts[{i}]", orig_hw, normalize_coords)
        for i, p in enumerate(prompts)
    ]


def _chunk(indices: list[int], wire: list[WirePrompt]) -> DecodeChunk:
    members = [wire[i] for i in indices]
    coords = np.stack([m.coords for m in members]).astype(np.float32)
    labels = np.stack([m.labels for m in members]).astype(np.int32)
    masks = [m.mask for m in members]
    if all(m is None for m in masks):
        mask_input = np.zeros((1, 1, *_MASK_HW), np.float32)
        has_mask = np.zeros((1,), np.float32)
    elif all(m is not None and np.array_equal(m, masks[0]) for m in masks):
        mask_input = masks[0].reshape(1, 1, *_MASK_HW)  # one mask shared by all prompts
        has_mask = np.ones((1,), np.float32)
    else:
        mask_input = np.zeros((len(members), 1, *_MASK_HW), np.float32)
        has_mask = np.zeros((len(members),), np.float32)
        for row, m in enumerate(masks):
            if m is not None:
                mask_input[row, 0] = m
                has_mask[row] = 1.0
    return DecodeChunk(np.asarray(indices, np.int64), coords, labels, mask_input, has_mask)


def plan_decode(wire: Sequence[WirePrompt], max_prompts_per_request: int) -> list[DecodeChunk]:
    """Group prompts by total point count (padding with -1 points would change SAM 2's result)
    and split each group into chunks of at most ``max_prompts_per_request`` prompts."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(wire):
        groups.setdefault(int(w.coords.shape[0]), []).append(i)
    chunks = []
    for members in groups.values():
        for start in range(0, len(members), max_prompts_per_request):
            chunks.append(_chunk(members[start : start + max_prompts_per_request], wire))
    logger.debug("decode plan: %d prompts -> %d requests", len(wire), len(chunks))
    return chunks
