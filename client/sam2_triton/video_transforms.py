"""Client-side pre- and post-processing of SAM 2.1's video predictor, in numpy only (never torch).

Each function reproduces one step of ``sam2.sam2_video_predictor.SAM2VideoPredictor`` (sam2 1.1.0)
in float32:

* :func:`antialias_resize`: ``torch.nn.functional.interpolate(x, size, mode="bilinear",
  align_corners=False, antialias=True)`` on the CPU, used by ``add_new_mask`` (a mask prompt
  resized to 1024 x 1024) and ``SAM2Base._use_mask_as_output`` (+-10 logits, 1024 -> 256).
* :func:`mask_prompt_to_model`: ``add_new_mask``'s resize and ``>= 0.5`` threshold.
* :func:`video_res_masks`: ``_get_orig_video_res_output`` (256 x 256 logits to the video's size,
  bilinear *without* antialiasing; :func:`sam2_triton.transforms.upsample_masks`).
* :func:`normalize_points` / :func:`prompt_points`: ``add_new_points_or_box``'s box-as-corners
  and ``points / [W, H] * image_size``.
"""

from __future__ import annotations

import math

import numpy as np

from . import spec
from .errors import InvalidInputError, InvalidPromptError
from .transforms import _check_hw, transform_coords, upsample_masks

__all__ = [
    "antialias_resize",
    "mask_prompt_to_model",
    "normalize_points",
    "prompt_points",
    "video_res_masks",
]

_F32 = np.float32
_F64 = np.float64
#: point labels SAM 2 knows: 0 negative, 1 positive, 2/3 box corners, -1 padding
_LABELS = (-1, 0, 1, 2, 3)


# --------------------------------------------------------------------------------------------
# antialiased bilinear resize
# --------------------------------------------------------------------------------------------
def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``[out, K]`` (intp) and float32 weights ``[out, K]`` of one axis.

    aten's ``HelperInterpBase::_compute_index_ranges_weights`` /
    ``_compute_indices_min_size_weights_aa`` (UpSampleKernel.cpp) for the bilinear ("triangle")
    filter and a float32 tensor, with its mixed float/double arithmetic reproduced step by step.
    Taps past ``xsize`` get weight 0 and a valid (repeated) index.
    """
    scale = _F32(in_size) / _F32(out_size)  # area_pixel_compute_scale<float>, no scale_factor
    support = _F32(scale) if scale >= 1.0 else _F32(1.0)  # (interp_size * 0.5) * scale
    k = math.ceil(float(support)) * 2 + 1  # max_interp_size
    invscale = _F32(1.0 / _F64(scale)) if scale >= 1.0 else _F32(1.0)
    i = np.arange(out_size, dtype=_F64)
    center = (_F64(scale) * (i + 0.5)).astype(_F32)  # scale * (i + 0.5): double, stored float
    xmin = np.maximum(np.trunc((center - support).astype(_F64) + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc((center + support).astype(_F64) + 0.5).astype(np.int64), in_size)
    xsize = np.clip(xmax - xmin, 0, k)
    j = np.arange(k, dtype=np.int64)
    src = xmin[:, None] + j[None, :]  # j + xmin (int64)
    valid = j[None, :] < xsize[:, None]
    # (j + xmin - center + 0.5) * invscale: int64 - float in float, then double, then float
    arg = (src.astype(_F32) - center[:, None]).astype(_F64) + 0.5
    arg = np.abs((arg * _F64(invscale)).astype(_F32))
    w = np.where(arg < 1.0, (1.0 - arg.astype(_F64)).astype(_F32), _F32(0.0))
    w = np.where(valid, w, _F32(0.0)).astype(_F32)
    total = np.zeros(out_size, _F32)
    for t in range(k):  # sequential float32 sum, as the C++ loop
        total = (total + w[:, t]).astype(_F32)
    safe = np.where(total != 0.0, total, _F32(1.0))
    w = np.where(total[:, None] != 0.0, w / safe[:, None], w).astype(_F32)
    idx = np.where(valid, src, np.minimum(xmin, in_size - 1)[:, None])
    return idx.astype(np.intp), w


def _aa_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass along ``axis`` (float32 in, float32 out).

    aten's ``interpolate_aa_single_dim``: ``out = src[0] * w[0]``, then ``out += src[j] * w[j]``,
    which the vectorised CPU build contracts into fused multiply-adds; emulated in float64 (the
    product of two float32 is exact there), rounded to float32 after each tap.
    """
    idx, w = _aa_weights(x.shape[axis], out_size)
    x = np.moveaxis(x, axis, -1)
    out = np.multiply(np.take(x, idx[:, 0], axis=-1), w[:, 0], dtype=_F32)
    for t in range(1, idx.shape[1]):
        prod = np.take(x, idx[:, t], axis=-1).astype(_F64) * w[:, t].astype(_F64)
        out = (prod + out).astype(_F32)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def antialias_resize(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of ``x`` (``[..., H, W]``) to ``out_hw``, float32.

    Reproduces ``torch.nn.functional.interpolate(x, size=out_hw, mode="bilinear",
    align_corners=False, antialias=True)`` on the CPU (PyTorch's separable antialiased kernel,
    ``_upsample_bilinear2d_aa``): the same triangle filter widened by the scale when shrinking,
    the same float32 weights, the width pass first, then the height pass; an axis whose size
    does not change is copied. Downsampling and upsampling. Measured against torch 2.14.1 to
    within a float32 ULP or two of the values (see tests/test_video_io.py).
    """
    if not isinstance(x, np.ndarray) or x.ndim < 2 or x.dtype.kind not in "fbiu":
        desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise InvalidInputError(f"x must be a numeric [..., H, W] array, got {desc}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise InvalidInputError(f"x has an empty spatial size {x.shape[-2:]}")
    h_out, w_out = _check_hw(out_hw)
    out = x.astype(_F32)  # always a new array
    if out.shape[-1] != w_out:
        out = _aa_axis(out, out.ndim - 1, w_out)
    if out.shape[-2] != h_out:
        out = _aa_axis(out, out.ndim - 2, h_out)
    return out


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
def mask_prompt_to_model(mask: np.ndarray, size: int = spec.IMAGE_SIZE) -> np.ndarray:
    """A mask prompt as ``SAM2VideoPredictor.add_new_mask`` feeds it to the model.

    ``mask``: ``[H, W]`` bool, or numbers that are all 0 or 1, in the video's frame. Returns a
    new bool ``[size, size]`` array: the mask itself when it is already ``size x size``, else
    :func:`antialias_resize` of the 0/1 float mask followed by ``>= 0.5`` (as SAM 2). Where the
    resized value lands exactly on 0.5 in exact arithmetic (e.g. a 2x upsample halfway between a
    0 and a 1), the outcome depends on the last float32 bit and may, rarely, differ from torch's.

    Raises InvalidPromptError: not a 2-D array, empty, or values other than 0/1.
    """
    if not isinstance(mask, np.ndarray):
        try:
            mask = np.asarray(mask)
        except (TypeError, ValueError) as exc:
            raise InvalidPromptError(f"mask must be a 2-D bool array, got {type(mask)}") from exc
    if mask.ndim != 2:
        raise InvalidPromptError(
            f"mask must be a 2-D [H, W] array (one object, the video's frame size), got shape "
            f"{mask.shape}"
        )
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        raise InvalidPromptError(f"mask is empty, shape {mask.shape}")
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "iuf":
            raise InvalidPromptError(f"mask must be bool or 0/1 numbers, got dtype {mask.dtype}")
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            y, x = np.argwhere(bad)[0]
            raise InvalidPromptError(
                f"mask must hold only 0/1 (or be bool), got {mask[y, x]!r} at (y={y}, x={x})"
            )
        mask = mask != 0
    if mask.shape == (size, size):
        return mask.copy()
    resized = antialias_resize(mask.astype(_F32), (size, size))
    return resized >= _F32(0.5)


def video_res_masks(low_res: np.ndarray, video_hw: tuple[int, int]) -> np.ndarray:
    """Low-resolution logits ``[O, 1, h, w]`` at the video's size ``[O, 1, H, W]``, float32.

    ``SAM2VideoPredictor._get_orig_video_res_output``: unchanged (a copy) when ``(h, w)`` already
    is ``(H, W)``, else ``F.interpolate(x, (H, W), mode="bilinear", align_corners=False)`` (no
    antialiasing), i.e. :func:`sam2_triton.transforms.upsample_masks`. SAM 2's
    ``non_overlap_masks`` option (off by default) is not applied.
    """
    if not isinstance(low_res, np.ndarray) or low_res.ndim != 4 or low_res.dtype.kind != "f":
        desc = (
            f"{low_res.dtype} {low_res.shape}"
            if isinstance(low_res, np.ndarray)
            else type(low_res).__name__
        )
        raise InvalidInputError(f"low_res must be a float [O, 1, h, w] array, got {desc}")
    h, w = _check_hw(video_hw)
    if low_res.shape[-2:] == (h, w):
        return low_res.astype(_F32, copy=True)
    return upsample_masks(low_res, (h, w))


# --------------------------------------------------------------------------------------------
# points and boxes
# --------------------------------------------------------------------------------------------
def normalize_points(
    points: np.ndarray,
    video_hw: tuple[int, int],
    normalize_coords: bool = True,
    size: int = spec.IMAGE_SIZE,
) -> np.ndarray:
    """``(x, y)`` points ``[N, 2]`` in video pixels to the model frame, float32 ``[N, 2]``.

    ``add_new_points_or_box``: ``points / torch.tensor([W, H]) * image_size`` in float32
    (``normalize_coords=False``: the points are already in ``[0, 1]``, only ``* image_size``).
    Bit-identical (same float32 operations: :func:`sam2_triton.transforms.transform_coords`).
    """
    return transform_coords(points, video_hw, normalize=normalize_coords, size=size)


def prompt_points(
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    video_hw: tuple[int, int],
    normalize_coords: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """What ``add_new_points_or_box`` sends to the model: ``(coords [P, 2] float32, labels [P]
    int32)`` in the 1024 model frame.

    As SAM 2: points and labels go together; at least one of points or box; ``points`` may be
    ``[N, 2]`` or ``[1, N, 2]`` (labels ``[N]`` or ``[1, N]``); a box ``(x0, y0, x1, y1)`` becomes
    its two corners labelled 2 and 3, placed *before* the points; then :func:`normalize_points`.

    Raises InvalidPromptError for anything SAM 2 would reject or misread.
    """
    if (points is None) != (labels is None):
        raise InvalidPromptError("points and labels must be provided together")
    if points is None and box is None:
        raise InvalidPromptError("at least one of points or box must be provided as input")
    coords = np.zeros((0, 2), _F32)
    labs = np.zeros((0,), np.int32)
    if points is not None:
        coords = _float32(points, "points")
        if coords.ndim == 3 and coords.shape[0] == 1:
            coords = coords[0]
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise InvalidPromptError(f"points must have shape [N, 2] (x, y), got {coords.shape}")
        labs = _labels(labels, len(coords))
    if box is not None:
        b = _float32(box, "box")
        if b.size != 4:
            raise InvalidPromptError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {b.shape}")
        coords = np.concatenate([b.reshape(2, 2), coords])
        labs = np.concatenate([np.array([2, 3], np.int32), labs])
    return normalize_points(coords, video_hw, normalize_coords), labs


def _float32(x: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InvalidPromptError(f"{name} must be numbers, got {type(x).__name__}") from exc
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise InvalidPromptError(f"{name} must be numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = arr.astype(_F32)  # torch.tensor(x, dtype=torch.float32)
    if not np.isfinite(arr).all():
        raise InvalidPromptError(f"{name} contains NaN or inf")
    return arr


def _labels(labels: object, n: int) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise InvalidPromptError(f"labels must be integers, got {type(labels).__name__}") from exc
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (n,):
        raise InvalidPromptError(f"labels must have shape [{n}] (one per point), got {arr.shape}")
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise InvalidPromptError(f"labels must be integers, got dtype {arr.dtype}")
    bad = ~np.isin(arr, _LABELS)
    if bad.any():
        raise InvalidPromptError(
            f"labels must be in {_LABELS} (1 = object, 0 = background, 2/3 = box corners, "
            f"-1 = padding), got {arr[bad][0]!r}"
        )
    return arr.astype(np.int32)


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32: ``tensor.to(torch.bfloat16)``,
    which is how SAM2VideoPredictor stores memory features (``_run_single_frame_inference``)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)
