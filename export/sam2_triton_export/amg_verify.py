"""Check ``sam2_amg_masks`` (onnxruntime) against SAM 2's own code on synthetic logits.

The reference is ``SAM2AutomaticMaskGenerator._process_batch`` after the decoder, run with
``sam2.utils.amg``'s functions and ``F.interpolate`` exactly as SAM 2 calls them. Gates: the same
masks kept (indices), the same boxes, stability scores within ``STABILITY_TOL`` and at most
``PIXEL_TOL`` of the mask pixels different (bilinear rounding differs at the 1e-7 level, so a
pixel whose logit is that close to the threshold may flip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam2_triton import amg, spec

from .verify import ParityError

STABILITY_TOL = 1e-3
PIXEL_TOL = 1e-4
# (orig_hw, crop_box, pred_iou_thresh, stability_score_thresh, mask_threshold, offset)
CASES = (
    ((300, 400), (0, 0, 400, 300), 0.0, 0.0, 0.0, 1.0),
    ((300, 400), (50, 20, 260, 250), 0.3, 0.5, 0.0, 1.0),
    ((1024, 768), (0, 0, 768, 1024), 0.5, 0.8, 0.2, 1.0),
    ((120, 90), (10, 10, 80, 110), 0.0, 0.9, -0.5, 0.5),
    ((64, 700), (300, 0, 700, 64), 0.0, 0.0, 0.0, 1.0),
)


def smooth_logits(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, 256, 256]`` float32 logits with blob-shaped masks (low-frequency noise)."""
    import torch
    import torch.nn.functional as F

    base = torch.from_numpy(rng.normal(size=(n, 1, 8, 8)).astype(np.float32) * 8)
    up = F.interpolate(base, (spec.LOW_RES_SIZE,) * 2, mode="bicubic", align_corners=False)
    noise = rng.normal(size=(n, spec.LOW_RES_SIZE, spec.LOW_RES_SIZE)) * 0.3
    return (up[:, 0].numpy() + noise).astype(np.float32)


def reference(
    low: np.ndarray,
    iou: np.ndarray,
    crop_box: tuple[int, int, int, int],
    orig_hw: tuple[int, int],
    pred_iou_thresh: float,
    stability_score_thresh: float,
    mask_threshold: float,
    offset: float,
) -> dict[str, np.ndarray]:
    """SAM 2's ``_process_batch`` from the selected low-res logits on (``use_m2m=False``)."""
    import torch
    import torch.nn.functional as F
    from sam2.utils.amg import (
        MaskData,
        batched_mask_to_box,
        calculate_stability_score,
        is_box_near_crop_edge,
        uncrop_masks,
    )

    h, w = orig_hw
    x0, y0, x1, y1 = crop_box
    masks = F.interpolate(
        torch.from_numpy(low)[:, None], (y1 - y0, x1 - x0), mode="bilinear", align_corners=False
    )[:, 0]
    data = MaskData(masks=masks, iou_preds=torch.from_numpy(iou), idx=torch.arange(len(low)))
    if pred_iou_thresh > 0.0:
        data.filter(data["iou_preds"] > pred_iou_thresh)
    data["stability_score"] = calculate_stability_score(data["masks"], mask_threshold, offset)
    if stability_score_thresh > 0.0:
        data.filter(data["stability_score"] >= stability_score_thresh)
    data["masks"] = data["masks"] > mask_threshold
    data["boxes"] = batched_mask_to_box(data["masks"])
    keep = ~is_box_near_crop_edge(data["boxes"], list(crop_box), [0, 0, w, h])
    if not torch.all(keep):
        data.filter(keep)
    data["masks"] = uncrop_masks(data["masks"], list(crop_box), h, w)
    return {k: v.numpy() for k, v in data.items()}


def verify(path: str | Path, seed: int = 0, n: int = 48) -> dict[str, float]:
    """Run every case; returns the measured numbers, raises ParityError if a gate fails."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    kept = flipped = pixels = 0
    stab_diff = 0.0
    failures = []
    for case, (hw, crop, p_iou, p_stab, mt, off) in enumerate(CASES):
        low = smooth_logits(n, rng)
        iou = rng.uniform(0, 1, n).astype(np.float32)
        keep, stab, boxes, masks_t = session.run(
            None,
            {
                spec.LOW_RES_MASKS: low,
                spec.IOU_PREDICTIONS: iou,
                spec.AMG_CROP_BOX: np.array(crop, np.int64),
                spec.AMG_ORIG_HW: np.array(hw, np.int64),
                spec.AMG_THRESHOLDS: amg.graph_thresholds(
                    amg.GeneratorOptions(
                        pred_iou_thresh=p_iou,
                        stability_score_thresh=p_stab,
                        mask_threshold=mt,
                        stability_score_offset=off,
                    )
                ),
            },
        )
        ref = reference(low, iou, crop, hw, p_iou, p_stab, mt, off)
        if not np.array_equal(keep, ref["idx"]):
            failures.append(f"case {case}: kept {keep.tolist()} != SAM 2's {ref['idx'].tolist()}")
            continue
        if not np.array_equal(boxes, ref["boxes"]):
            failures.append(f"case {case}: boxes differ from batched_mask_to_box")
        kept += len(keep)
        if len(keep):
            stab_diff = max(stab_diff, float(np.abs(stab - ref["stability_score"]).max()))
            flipped += int((masks_t.transpose(0, 2, 1).astype(bool) != ref["masks"]).sum())
            pixels += ref["masks"].size
    numbers = {
        "cases": float(len(CASES)),
        "masks_kept": float(kept),
        "stability_max_abs_diff": stab_diff,
        "mask_pixels_differing": float(flipped),
        "mask_pixel_fraction_differing": flipped / max(pixels, 1),
    }
    if stab_diff > STABILITY_TOL:
        failures.append(f"stability scores differ by {stab_diff:.2e} > {STABILITY_TOL}")
    if numbers["mask_pixel_fraction_differing"] > PIXEL_TOL:
        failures.append(f"{flipped} of {pixels} mask pixels differ (> {PIXEL_TOL:.0e})")
    if kept == 0:
        failures.append("no case kept a mask: the check would prove nothing")
    if failures:
        raise ParityError(f"{spec.AMG_MASKS_MODEL} failed verification: " + "; ".join(failures))
    return numbers
