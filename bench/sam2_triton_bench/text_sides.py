"""The two sides of ``bench text`` and their comparison: Lang-SAM's pipeline in PyTorch
(``LangSamTorch``), ``sam2_triton.LangSAM`` on Triton (``triton_predict``), per-image exactness
(``compare``) and its totals (``exactness``), the box threshold's calibration."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SIDES = ("pytorch", "triton")
MIN_MARGIN = 1e-4  # the calibrated threshold keeps at least this distance from every score


class LangSamTorch:
    """Lang-SAM's ``LangSAM.predict`` for one image in this process (``lang_sam.models.gdino``
    and ``lang_sam.models.sam``), its stages timed. SAM 2 is built by ``build_sam2`` (what the
    export verifies against); ``lang_sam_masks`` gives the masks of Lang-SAM's own build."""

    def __init__(self, detector_dir: Path, state_dict: dict, config: str, device: str) -> None:
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from sam2_triton_export.detector_export import load_detector

        model, self.processor, self.info = load_detector(detector_dir)
        self.detector = model.to(device)
        self.device = device
        sam = build_sam2(config, ckpt_path=None, device=device)
        sam.load_state_dict(state_dict)
        self.sam = SAM2ImagePredictor(sam.eval())

    def detect(self, image: Image.Image, text: str, box_t: float, text_t: float) -> dict:
        """``GDINO.predict``: boxes, scores, labels and the seconds of its three stages."""
        import torch

        t0 = time.perf_counter()
        prompt = text if text.endswith(".") else text + "."
        inputs = self.processor(images=[image], text=[prompt], padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        t1 = time.perf_counter()
        with torch.no_grad():
            outputs = self.detector(**inputs)
        t2 = time.perf_counter()
        (res,) = self.processor.post_process_grounded_object_detection(
            outputs, inputs.input_ids, threshold=box_t, text_threshold=text_t,
            target_sizes=[image.size[::-1]],
        )  # fmt: skip
        t3 = time.perf_counter()
        return {
            "scores": res["scores"].cpu().numpy(),
            "boxes": res["boxes"].cpu().numpy(),
            "labels": list(res["text_labels"]),
            "parts": {"preprocess": t1 - t0, "detector": t2 - t1, "postprocess": t3 - t2},
        }

    def predict(self, image: Image.Image, text: str, box_t: float, text_t: float) -> dict:
        """Detect, then (when anything was detected) ``set_image`` + ``predict`` on the boxes."""
        t0 = time.perf_counter()
        out = self.detect(image, text, box_t, text_t)
        masks, mask_scores = np.zeros((0, image.height, image.width), bool), np.zeros(0)
        if out["labels"]:
            t1 = time.perf_counter()
            self.sam.set_image(np.asarray(image))
            t2 = time.perf_counter()
            masks, mask_scores, _ = self.sam.predict(box=out["boxes"], multimask_output=False)
            out["parts"].update(encoder=t2 - t1, decoder=time.perf_counter() - t2)
            if masks.ndim > 3:
                masks = np.squeeze(masks, axis=1)
        out["seconds"] = time.perf_counter() - t0
        out["parts"]["rest"] = out["seconds"] - sum(out["parts"].values())
        return {**out, "masks": masks > 0.5, "mask_scores": np.ravel(mask_scores)}

    def lang_sam_masks(self, boxes: np.ndarray) -> np.ndarray:
        """The masks of the image last set with Lang-SAM's SAM 2 build (``instantiate`` of the
        config without ``build_sam2``'s ``dynamic_multimask_via_stability``): mask token 0."""
        decoder = self.sam.model.sam_mask_decoder
        old = decoder.dynamic_multimask_via_stability
        decoder.dynamic_multimask_via_stability = False
        try:
            masks, _, _ = self.sam.predict(box=boxes, multimask_output=False)
        finally:
            decoder.dynamic_multimask_via_stability = old
        return (np.squeeze(masks, axis=1) if masks.ndim > 3 else masks) > 0.5


def triton_predict(model: Any, image: Image.Image, text: str, box_t: float, text_t: float) -> dict:
    """``LangSAM.predict([image], [text], ...)`` timed; its result as ``LangSamTorch.predict``'s."""
    t0 = time.perf_counter()
    (r,) = model.predict([image], [text], box_t, text_t)
    seconds = time.perf_counter() - t0
    n = len(r["labels"])
    masks = np.asarray(r["masks"]) > 0.5 if n else np.zeros((0, image.height, image.width), bool)
    return {"seconds": seconds, "scores": np.asarray(r["scores"]), "labels": list(r["labels"]),
            "boxes": np.asarray(r["boxes"]).reshape(n, 4), "masks": masks,
            "mask_scores": np.ravel(r["mask_scores"]) if n else np.zeros(0)}  # fmt: skip


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def compare(ref: dict, got: dict) -> dict[str, Any]:
    """Triton's objects (``got``) against PyTorch's: counts, then each PyTorch box paired with
    the nearest unused Triton box (max |coordinate difference|, px), the pairs' score, label,
    mask IoU and mask score differences; ``same_order``: every pair is (k, k)."""
    n, m = len(ref["labels"]), len(got["labels"])
    pairs, used = [], set()
    for k in range(n):
        d = [np.abs(ref["boxes"][k] - got["boxes"][j]).max() if j not in used else np.inf
             for j in range(m)]  # fmt: skip
        if m > len(used):
            j = int(np.argmin(d))
            used.add(j)
            pairs.append((k, j, float(d[j])))
    ious = [iou(ref["masks"][k], got["masks"][j]) for k, j, _ in pairs]
    return {
        "objects": [n, m],
        "count_equal": n == m,
        "same_order": all(k == j for k, j, _ in pairs),
        "box_px": max((d for *_, d in pairs), default=0.0),
        "score": max(
            (abs(float(ref["scores"][k] - got["scores"][j])) for k, j, _ in pairs), default=0.0
        ),
        "labels_differ": sum(ref["labels"][k] != got["labels"][j] for k, j, _ in pairs),
        "min_iou": min(ious, default=None),
        "ious": ious,
        "mask_score": max(
            (abs(float(ref["mask_scores"][k] - got["mask_scores"][j])) for k, j, _ in pairs),
            default=0.0,
        ),
    }


def calibrate(ref: LangSamTorch, image: Image.Image, text: str, objects: int,
              text_t: float) -> dict[str, Any]:  # fmt: skip
    """The box threshold that keeps about ``objects`` boxes of ``image`` (PyTorch's scores):
    midway between the ``objects``-th highest score and the next; when those two are closer
    than ``2 * MIN_MARGIN``, the nearest rank (+-2) whose gap is not (else the widest gap)."""
    scores = np.sort(ref.detect(image, text, 0.0, text_t)["scores"].astype(np.float64))[::-1]
    ranks = [k for k in (objects, objects + 1, objects - 1, objects + 2, objects - 2)
             if 1 <= k < len(scores)]  # fmt: skip
    if not ranks:
        return {"box_threshold": 0.0, "kept": len(scores), "margin": None}
    gap = {k: float(scores[k - 1] - scores[k]) for k in ranks}
    kept = next((k for k in ranks if gap[k] / 2 >= MIN_MARGIN), max(ranks, key=gap.get))
    return {"box_threshold": float(scores[kept]) + gap[kept] / 2, "kept": kept,
            "margin": gap[kept] / 2, "scores_around": [float(scores[kept - 1]),
                                                       float(scores[kept])]}  # fmt: skip


def picture(h: int, w: int, seed: int) -> Image.Image:
    from sam2_triton_export.detector_verify import synthetic_image

    return Image.fromarray(synthetic_image(h, w, seed=seed))


def one_image(ref: LangSamTorch, tri: Any, image: Image.Image, text: str, thresholds: tuple,
              order: list[str]) -> dict[str, Any]:  # fmt: skip
    """Both sides on ``image`` in ``order``: seconds, objects, PyTorch's stage times, exactness
    (and, untimed, the IoU of each mask with the one Lang-SAM's own SAM 2 build would give)."""
    sides = {"pytorch": ref.predict, "triton": lambda *a: triton_predict(tri, *a)}
    out = {side: sides[side](image, text, *thresholds) for side in order}
    pt = out["pytorch"]
    check = compare(pt, out["triton"])
    if pt["labels"]:
        own = ref.lang_sam_masks(pt["boxes"])
        check["lang_sam_build_ious"] = [iou(a, b) for a, b in zip(own, pt["masks"])]
    return {
        "size": [image.height, image.width],
        "order": order,
        "seconds": {s: out[s]["seconds"] for s in SIDES},
        "objects": {s: len(out[s]["labels"]) for s in SIDES},
        "parts_pytorch": pt["parts"],
        "check": check,
    }


def exactness(checks: list[dict]) -> dict[str, Any]:
    """Totals of ``compare`` over images (warm-up included)."""
    ious = [v for c in checks for v in c["ious"]]
    own = [v for c in checks for v in c.get("lang_sam_build_ious", [])]
    return {
        "images": len(checks),
        "objects": [sum(c["objects"][k] for c in checks) for k in (0, 1)],
        "count_mismatches": sum(not c["count_equal"] for c in checks),
        "max_box_px": max((c["box_px"] for c in checks), default=0.0),
        "same_order": all(c["same_order"] for c in checks),
        "max_score_diff": max((c["score"] for c in checks), default=0.0),
        "labels_differ": sum(c["labels_differ"] for c in checks),
        "masks": len(ious),
        "min_iou": min(ious, default=None),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "max_mask_score_diff": max((c["mask_score"] for c in checks), default=0.0),
        "lang_sam_build": {
            "masks": len(own),
            "differ": sum(v < 1.0 for v in own),
            "min_iou": min(own, default=None),
        },
    }
