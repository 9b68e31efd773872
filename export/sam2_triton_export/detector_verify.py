"""Verify a detector graph: onnxruntime against transformers' own model and post-processing.

Per case, the same processor outputs go to both; compared slot by slot (query by query) are the
logits (finite entries; the -inf pattern must be equal), the boxes, and after
``post_process_grounded_object_detection`` with Lang-SAM's thresholds which queries are kept,
their labels, scores and boxes in pixels. Tolerances: measured on seeded tiny configs (logits
<= 1.7e-3, boxes after post-processing <= 2.4e-4 px); the issue's gate for boxes is 1e-3 px.

Near-ties: the decoder's queries are the top-k encoder proposals, sorted, and each slot has its
own learned content embedding. Two proposals whose scores differ by less than float noise may
come out in the other order (or, at the k-th place, one instead of the other); the two slots
then hold different proposals and legitimately differ, while every other slot still agrees to
float noise (measured). Such slots (``tied_slots``: a neighbour within :data:`TIE_MARGIN`,
relative, in the reference's sorted scores) are reported and left out of the gates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sam2_triton import text_spec

# ONNX vs transformers, measured on random weights: the test architecture agrees to logits
# 9.5e-5 and scores 1.8e-5; the published architecture (Swin-T, 6+6 layers, logits up to ~60)
# to logits 1.7e-3 and scores 2.9e-4 (float32 noise, relative ~3e-5). A wrong graph is off by
# far more (one perturbed box-head bias: logits 0.8, boxes 16 px).
LOGITS_TOLERANCE = 5e-3
BOXES_TOLERANCE = 1e-5
BOX_PX_TOLERANCE = 1e-3
SCORE_TOLERANCE = 5e-4  # the sigmoid's slope is at most 1/4: logits within 2e-3
# a probability this close to a threshold may flip a strict ">" on float noise: that query's
# kept status or label is reported, not failed
THRESHOLD_MARGIN = 1e-5
# encoder proposal scores closer than this, relative to their size (at least 1), may swap places
# between torch and onnxruntime: their encoders agree to ~1e-5 relative; swaps were measured at
# gaps of 2e-6 (scores ~10) and 1e-4..3e-4 (scores ~50)
TIE_MARGIN = 2e-5


class VerifyCase(NamedTuple):
    """One comparison: B synthetic images of these original (h, w) and one prompt each."""

    image_hws: tuple[tuple[int, int], ...]
    texts: tuple[str, ...]


def cases_for(orientation: str, canvas: tuple[int, int]) -> tuple[VerifyCase, ...]:
    """The checks of one canvas: an image that fills it (so the input is exactly the unpadded
    one Lang-SAM feeds transformers), and two smaller 4:3 images with prompts of different
    lengths in one batch (padded image and text: B and T dynamic)."""
    small = ((480, 640), (375, 500))
    if orientation == "portrait":
        small = tuple((w, h) for h, w in small)
    return (
        VerifyCase((tuple(canvas),), ("cat. remote control.",)),
        VerifyCase(small, ("a red car.", "dog. person. ball. chair.")),
    )


def synthetic_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB test image ``h x w x 3``: gradients plus noise (structure for the backbone)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, ((xx + yy) % 64) * 4], -1)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def _maxdiff(a: object, b: object) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _canvas(path: Path) -> tuple[int, int]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[2].dim_value), int(dims[3].dim_value)


def _pp(
    processor: object,
    logits: np.ndarray,
    boxes: np.ndarray,
    input_ids: np.ndarray,
    sizes: list[tuple[int, int]],
) -> list[dict]:
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        GroundingDinoObjectDetectionOutput,
    )

    out = GroundingDinoObjectDetectionOutput(
        logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes)
    )
    res = processor.post_process_grounded_object_detection(
        out,
        torch.from_numpy(input_ids),
        threshold=text_spec.BOX_THRESHOLD,
        text_threshold=text_spec.TEXT_THRESHOLD,
        target_sizes=sizes,
    )
    return [
        {
            "scores": r["scores"].numpy(),
            "boxes": r["boxes"].numpy(),
            "labels": list(r["text_labels"]),
        }
        for r in res
    ]


def topk_margins(enc_outputs_class: np.ndarray, k: int) -> dict[str, float]:
    """How close the two-stage top-k came to a tie: the smallest gap between neighbours among
    the k best proposal scores (``topk_margin``) and between the k-th and the next one
    (``topk_boundary_margin``). ``enc_outputs_class``: [B, S, 256] float32."""
    scores = np.nan_to_num(enc_outputs_class.max(-1).astype(np.float64), neginf=-1e30)
    top = -np.sort(-scores, axis=1)[:, : k + 1]
    gaps = top[:, :-1] - top[:, 1:]
    return {
        "topk_margin": float(gaps[:, : k - 1].min()) if k > 1 else float("inf"),
        "topk_boundary_margin": float(gaps[:, k - 1].min()) if top.shape[1] > k else float("inf"),
    }


def tied_slots(enc_outputs_class: np.ndarray, k: int, margin: float = TIE_MARGIN) -> np.ndarray:
    """[B, k] bool: query slots whose proposal score is within ``margin`` x max(1, |score|) of a
    neighbour's in the sorted top-k (+1: the k-th slot against the first proposal left out)."""
    scores = np.nan_to_num(enc_outputs_class.max(-1).astype(np.float64), neginf=-1e30)
    top = -np.sort(-scores, axis=1)[:, : k + 1]
    close = np.zeros((top.shape[0], k), bool)  # [B, k]: slot i vs slot i + 1 (k = S: no k+1-th)
    scale = np.maximum(1.0, np.abs(top[:, 1:]))
    close[:, : top.shape[1] - 1] = (top[:, :-1] - top[:, 1:]) < margin * scale
    tied = close.copy()
    tied[:, 1:] |= close[:, :-1]
    return tied


def _near(values: np.ndarray, threshold: float) -> np.ndarray:
    return np.abs(values.astype(np.float64) - threshold) < THRESHOLD_MARGIN


def _compare_slots(
    ref: dict, got: dict, probs_ref: np.ndarray, probs_got: np.ndarray, tied: np.ndarray
) -> dict:
    """One image: kept status, boxes, scores and labels of every query slot that is not tied."""
    q = probs_ref.shape[0]
    keep_ref = probs_ref.max(-1) > text_spec.BOX_THRESHOLD
    keep_got = probs_got.max(-1) > text_spec.BOX_THRESHOLD
    near_box = _near(probs_ref.max(-1), text_spec.BOX_THRESHOLD)
    near_text = _near(probs_ref, text_spec.TEXT_THRESHOLD).any(-1)
    slot_ref = dict(zip(np.nonzero(keep_ref)[0].tolist(), range(q)))
    slot_got = dict(zip(np.nonzero(keep_got)[0].tolist(), range(q)))
    out = {"kept_differ": 0, "box_px": 0.0, "score": 0.0, "labels_differ": 0, "excused": 0}
    for slot in range(q):
        if tied[slot]:
            continue
        if keep_ref[slot] != keep_got[slot]:
            out["excused" if near_box[slot] else "kept_differ"] += 1
            continue
        if not keep_ref[slot]:
            continue
        i, j = slot_ref[slot], slot_got[slot]
        out["box_px"] = max(out["box_px"], _maxdiff(ref["boxes"][i], got["boxes"][j]))
        out["score"] = max(out["score"], _maxdiff(ref["scores"][i], got["scores"][j]))
        if ref["labels"][i] != got["labels"][j]:
            out["excused" if near_text[slot] else "labels_differ"] += 1
    return out


def _verify_case(
    model: torch.nn.Module,
    processor: object,
    sess: object,
    case: VerifyCase,
    canvas: tuple[int, int],
) -> dict:
    images = [synthetic_image(h, w, seed=i) for i, (h, w) in enumerate(case.image_hws)]
    inputs = processor(
        images=images,
        text=list(case.texts),
        padding=True,
        return_tensors="pt",
        pad_size={"height": canvas[0], "width": canvas[1]},
    )
    feed = {n: inputs[n].numpy() for n in text_spec.DETECTOR_INPUT_NAMES}
    with torch.no_grad():
        ref = model(**{n: inputs[n] for n in text_spec.DETECTOR_INPUT_NAMES})
    ref_logits, ref_boxes = ref.logits.numpy(), ref.pred_boxes.numpy()
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    logits, boxes = got.get(text_spec.LOGITS), got.get(text_spec.PRED_BOXES)
    r: dict = {
        "pixel_values": list(feed[text_spec.PIXEL_VALUES].shape),
        "text_len": int(feed[text_spec.INPUT_IDS].shape[1]),
    }
    if logits is None or boxes is None or logits.shape != ref_logits.shape:
        r["error"] = f"outputs { {k: v.shape for k, v in got.items()} } != contract"
        return r
    enc = ref.enc_outputs_class.numpy()
    tied = tied_slots(enc, ref_logits.shape[1])
    r.update(topk_margins(enc, ref_logits.shape[1]))
    r["tied_slots"] = int(tied.sum())
    fin = np.isfinite(ref_logits)
    # -inf where the reference has -inf (a nan or +inf there is no masked token)
    r["inf_pattern_equal"] = bool(np.array_equal(np.isneginf(ref_logits), np.isneginf(logits)))
    untied = ~tied[..., None]
    r["logits"] = _maxdiff(np.where(fin & untied, ref_logits, 0), np.where(fin & untied, logits, 0))
    r["pred_boxes"] = _maxdiff(np.where(untied, ref_boxes, 0), np.where(untied, boxes, 0))
    sizes = [tuple(hw) for hw in case.image_hws]
    ids = feed[text_spec.INPUT_IDS]
    pp_ref = _pp(processor, ref_logits, ref_boxes, ids, sizes)
    pp_got = _pp(processor, logits, boxes, ids, sizes)
    r["kept"] = [[len(a["scores"]), len(b["scores"])] for a, b in zip(pp_ref, pp_got)]
    # torch's sigmoid, as in _pp: the kept slots must be exactly the ones post-processing kept
    probs_ref = torch.sigmoid(ref.logits).numpy()
    probs_got = torch.sigmoid(torch.from_numpy(logits)).numpy()
    per_image = [
        _compare_slots(pp_ref[b], pp_got[b], probs_ref[b], probs_got[b], tied[b])
        for b in range(len(images))
    ]
    r["slots"] = {
        "kept_differ": sum(p["kept_differ"] for p in per_image),
        "labels_differ": sum(p["labels_differ"] for p in per_image),
        "excused_near_threshold": sum(p["excused"] for p in per_image),
        "box_px": max(p["box_px"] for p in per_image),
        "score": max(p["score"] for p in per_image),
    }
    return r


def verify_detector(
    model: torch.nn.Module,
    processor: object,
    onnx_path: str | Path,
    cases: tuple[VerifyCase, ...],
) -> dict:
    """onnxruntime (CPU) vs transformers on ``cases`` at the graph's canvas; returns the report
    (``passed``, ``failures``, per case the worst differences over the untied slots)."""
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    model = model.eval()
    canvas = _canvas(onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report: dict = {
        "format": 1,
        "file": str(onnx_path),
        "canvas": list(canvas),
        "thresholds": [text_spec.BOX_THRESHOLD, text_spec.TEXT_THRESHOLD],
        "tie_margin": TIE_MARGIN,
        "tolerances": {
            "logits": LOGITS_TOLERANCE,
            "pred_boxes": BOXES_TOLERANCE,
            "box_px": BOX_PX_TOLERANCE,
            "score": SCORE_TOLERANCE,
        },
        "cases": {},
        "seconds": {},
    }
    for i, case in enumerate(cases):
        start = time.perf_counter()
        key = f"case{i}_b{len(case.texts)}"
        report["cases"][key] = _verify_case(model, processor, sess, case, canvas)
        report["seconds"][key] = round(time.perf_counter() - start, 1)
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report


def failures(report: dict) -> list[str]:
    """Every gate the report fails (nan fails too)."""
    out, tol = [], report["tolerances"]
    for key, r in report["cases"].items():
        if "error" in r:
            out.append(f"{key}: {r['error']}")
            continue
        if not r["inf_pattern_equal"]:
            out.append(f"{key}: -inf pattern of logits differs")
        slots = r["slots"]
        checks = [
            ("logits", r["logits"], tol["logits"]),
            ("pred_boxes", r["pred_boxes"], tol["pred_boxes"]),
            ("box_px", slots["box_px"], tol["box_px"]),
            ("score", slots["score"], tol["score"]),
        ]
        out += [f"{key} {name}: {v:.3g} > {t:g}" for name, v, t in checks if not v <= t]
        if slots["kept_differ"]:
            out.append(f"{key}: {slots['kept_differ']} queries kept on one side only")
        if slots["labels_differ"]:
            out.append(f"{key}: {slots['labels_differ']} kept queries differ in label")
    return out
